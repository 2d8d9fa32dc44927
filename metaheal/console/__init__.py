"""The web console: the fleet, the loop's reasoning, approvals signed in the browser, the ledger.

``metaheal console`` (or ``metaheal up --console-port``) serves it; everything it shows
is read from the topics and the ledger when it starts and followed live from then on
(see :mod:`metaheal.console.view` for the fold, :mod:`metaheal.console.app` for the
pages and :mod:`metaheal.console.decisions` for browser-signed approvals).
"""

from metaheal.console.server import ConsoleServer, ConsoleUnavailable

__all__ = ["ConsoleServer", "ConsoleUnavailable"]
