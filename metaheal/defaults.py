"""Process-wide handles configured from ``metaheal.yaml`` / ``METAHEAL_*`` on first use.

``from metaheal.ledger import immutable_log`` and ``from metaheal.agents.meta_coordinated_healing
import meta_coordinated_healing`` are :class:`Configured` handles: importing them needs no
configuration; the first attribute used builds the object from the settings found as the CLI
finds them (``$METAHEAL_CONFIG``, else ``./metaheal.yaml``, then ``METAHEAL_*``), and every
later use shares it. A setting that is missing is an error naming it:

>>> from metaheal.config import Settings
>>> handle = Configured("example", lambda s: s.topics.name("ledger"))
>>> handle.configure(Settings())
Traceback (most recent call last):
...
metaheal.errors.NotConfigured: example: kafka.bootstrap is not set: set it in metaheal.yaml ...
>>> handle.configure(Settings(kafka={"bootstrap": "localhost:9092"}))
'metaheal.ledger'
>>> handle.upper()
'METAHEAL.LEDGER'
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from metaheal.config import CONFIG_ENV, DEFAULT_CONFIG_FILE, Settings, load_settings
from metaheal.errors import NotConfigured

T = TypeVar("T")
BOOTSTRAP_ENV = "METAHEAL_BOOTSTRAP"  # the CLI's shorthand for METAHEAL_KAFKA__BOOTSTRAP


def environment_settings(what: str) -> Settings:
    """Settings as the CLI loads them, with a Kafka bootstrap (or :class:`NotConfigured`)."""
    env = os.environ.get(CONFIG_ENV)
    path = Path(env) if env else Path(DEFAULT_CONFIG_FILE) if Path(DEFAULT_CONFIG_FILE).is_file() else None
    settings = load_settings(path)
    if not settings.kafka.bootstrap and os.environ.get(BOOTSTRAP_ENV):
        settings.kafka.bootstrap = os.environ[BOOTSTRAP_ENV]
    return _checked(what, settings)


def _checked(what: str, settings: Settings) -> Settings:
    if not settings.kafka.bootstrap:
        raise NotConfigured(
            f"{what}: kafka.bootstrap is not set: set it in metaheal.yaml (./metaheal.yaml or $METAHEAL_CONFIG) "
            f"or set METAHEAL_KAFKA__BOOTSTRAP=HOST:PORT"
        )
    return settings


class Configured(Generic[T]):
    """A handle that builds its object from the environment's settings on first use, then forwards to it."""

    def __init__(self, name: str, build: Callable[[Settings], T], close: Callable[[T], None] | None = None) -> None:
        self._name = name
        self._build = build
        self._close = close
        self._obj: T | None = None
        self._lock = threading.Lock()
        atexit.register(self.reset)

    def get(self) -> T:
        """The object, built on first use from :func:`environment_settings`."""
        with self._lock:
            if self._obj is None:
                self._obj = self._build(environment_settings(self._name))
            return self._obj

    def configure(self, settings: Settings) -> T:
        """Build the object from ``settings`` instead (closing the one in use)."""
        obj = self._build(_checked(self._name, settings))
        with self._lock:
            old, self._obj = self._obj, obj
        if old is not None and self._close is not None:
            self._close(old)
        return obj

    def reset(self) -> None:
        """Close the object in use; the next use builds a new one from the environment."""
        with self._lock:
            old, self._obj = self._obj, None
        if old is not None and self._close is not None:
            self._close(old)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # introspection (doctest, copy, pickle) must not build the object
            raise AttributeError(attr)
        return getattr(self.get(), attr)

    def __repr__(self) -> str:
        state = "not built yet" if self._obj is None else repr(self._obj)
        return f"<{self._name}: {state}>"
