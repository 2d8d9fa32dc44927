"""Where the HTTP actuators may go: the admin-host allow-list, and what is refused whatever it says.

An admin URL comes from ``metaheal.yaml`` or from a registration on the bus, and a
playbook appends its path to it, so an admin URL is usable only if

* its form is plain: ``http(s)://host[:port][/path]``, no userinfo, query or fragment
  (:func:`metaheal.config.admin_url_problem`) — ``...#`` or ``...?`` would swallow the
  playbook's path, ``user@`` would disguise the host;
* its host is on ``executor.admin_hosts`` (host names, IP addresses, CIDRs);
* neither the host nor (for a name) any address it resolves to is link-local or a
  cloud metadata address (:data:`BLOCKED_NETWORKS`): those are refused even if listed.

Every URL a step calls is checked the same way, and must also stay under the service's
admin URL (same scheme, host, port and path prefix).

>>> from metaheal.config import ExecutorSettings
>>> hosts = ExecutorSettings().admin_hosts
>>> url_problem("http://127.0.0.1:8080/admin", hosts) is None
True
>>> url_problem("http://169.254.169.254/latest/meta-data", ["169.254.0.0/16"])
'host 169.254.169.254 is a link-local or cloud-metadata address (169.254.0.0/16): always refused'
>>> url_problem("http://10.1.2.3/", hosts)
'host 10.1.2.3 is not on executor.admin_hosts'
>>> under_admin_url("http://127.0.0.1:9/a/restart", "http://127.0.0.1:9/a")
True
>>> under_admin_url("http://127.0.0.1:9/ab", "http://127.0.0.1:9/a")
False
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

from metaheal.config import admin_url_problem

#: never reachable by an actuator, whatever ``admin_hosts`` says: link-local (cloud metadata lives there),
#: the AWS IPv6 metadata endpoint, the unspecified addresses
BLOCKED_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16",
        "fe80::/10",
        "fd00:ec2::254/128",
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "0.0.0.0/32",
        "::/128",
    )
)
#: host names of metadata services, refused by name before any lookup
BLOCKED_NAMES = frozenset({"metadata.google.internal", "metadata", "instance-data", "instance-data.ec2.internal"})


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _blocked(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    for net in BLOCKED_NETWORKS:
        if addr.version == net.version and addr in net:
            return str(net)
    return None


def _resolve(host: str) -> list[str]:
    try:
        return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None)})
    except (OSError, UnicodeError):
        return []


def _listed(host: str, addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None, allowed: Iterable[str]) -> bool:
    for entry in allowed:
        try:
            net = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if host.lower() == entry.lower():
                return True
            continue
        if addr is not None and addr.version == net.version and addr in net:
            return True
    return False


def url_problem(url: str, allowed: Iterable[str], *, resolve: bool = True, allow_query: bool = False) -> str | None:
    """Why ``url`` may not be called as (or under) an admin URL, in words; None: it may.

    ``resolve``: also look a host *name* up and refuse it if any address is blocked (a name that
    points at the metadata service). The lookup is advisory: the actuator connects later.
    ``allow_query``: a step's URL may carry a query (an admin URL may not).
    """
    problem = admin_url_problem(urlunsplit(urlsplit(url)._replace(query="")) if allow_query else url)
    if problem is not None:
        return problem
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    addr = _address(host)
    if addr is not None:
        net = _blocked(addr)
        if net is not None:
            return f"host {host} is a link-local or cloud-metadata address ({net}): always refused"
    elif host in BLOCKED_NAMES:
        return f"host {host} is a cloud-metadata name: always refused"
    if not _listed(host, addr, allowed):
        return f"host {host} is not on executor.admin_hosts"
    if addr is None and resolve:
        for a in _resolve(host):
            resolved = _address(a.split("%")[0])
            net = _blocked(resolved) if resolved is not None else None
            if net is not None:
                return f"host {host} resolves to {a}, a link-local or cloud-metadata address ({net}): always refused"
    return None


def under_admin_url(url: str, admin_url: str) -> bool:
    """Whether ``url`` is ``admin_url`` or below it (same scheme, host and port; path under its path)."""
    u, a = urlsplit(url), urlsplit(admin_url)
    try:
        same = (u.scheme, u.hostname, u.port) == (a.scheme, a.hostname, a.port)
    except ValueError:
        return False
    base = a.path.rstrip("/")
    return same and (u.path == base or u.path.startswith(base + "/") or (not base and u.path in ("", "/")))


__all__ = ["BLOCKED_NAMES", "BLOCKED_NETWORKS", "under_admin_url", "url_problem"]
