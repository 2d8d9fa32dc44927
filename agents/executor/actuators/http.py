"""``http.get`` / ``http.post``: call a service's admin API with httpx.

Redirects are followed only to the same host (a redirect elsewhere is a failed
step, not a request to an unknown party), and non-2xx statuses fail the step unless
``expect_status`` says otherwise. Under the executor every URL (and every redirect
target) must be allowed by :mod:`~metaheal.agents.executor.actuators.urls` and stay
under the service's admin URL.

What reaches the ledger of a response is its status, the sha256 and size of its body
and a bounded excerpt with secret-looking values redacted (:func:`excerpt`): the ledger
is readable by anyone who can read the topic, an admin API's answer may not be.

>>> excerpt({"instances": 3, "db_password": "hunter2", "nested": {"api_token": "t"}})
'{"db_password": "[redacted]", "instances": 3, "nested": {"api_token": "[redacted]"}}'
>>> excerpt("ok; secret=abc123 next")
'ok; secret=[redacted] next'

>>> HttpPost().check({"url": "http://svc:8080/scale", "json": {"delta": 2}})
>>> HttpGet().check({"url": "file:///etc/passwd"})
Traceback (most recent call last):
...
metaheal.errors.ActuatorError: params.url: scheme must be http or https, got 'file'
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import ssl
import time
from typing import Any, ClassVar

import httpx

from metaheal.agents.executor.actuators.base import (
    IDEMPOTENCY_HEADER,
    Actuator,
    ActuatorError,
    StepContext,
    StepResult,
)
from metaheal.agents.executor.actuators.urls import under_admin_url, url_problem

MAX_CAPTURE = 4096
#: characters of a response body kept in the ledger (after redaction)
MAX_EXCERPT = 512
MAX_REDIRECTS = 3
REDACTED = "[redacted]"
#: keys whose values are never written down
SECRET_KEY = re.compile(r"pass(word|wd)?|secret|token|api[_-]?key|private|credential|auth|cookie|session", re.I)
_SECRET_TEXT = re.compile(
    r"(?P<k>pass(?:word|wd)?|secret|token|api[_-]?key|private[_-]?key|credential|authorization|cookie|session)"
    r"(?P<sep>[\"']?\s*[:=]\s*[\"']?)(?P<v>[^\s\"',;&}]+)",
    re.I,
)


def redact(value: Any) -> Any:
    """``value`` with the values of secret-looking keys (and ``key=value`` text) replaced."""
    if isinstance(value, dict):
        return {k: REDACTED if SECRET_KEY.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _SECRET_TEXT.sub(lambda m: f"{m['k']}{m['sep']}{REDACTED}", value)
    return value


def excerpt(body: Any, limit: int = MAX_EXCERPT) -> str:
    """A redacted, bounded rendering of a response body for the ledger."""
    shown = redact(body)
    text = shown if isinstance(shown, str) else json.dumps(shown, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit] + "…"


def body_record(resp: httpx.Response, parsed: Any, text: str) -> dict[str, Any]:
    """What the ledger keeps of a response body: its hash, size and a redacted excerpt."""
    raw = resp.content
    return {
        "body_sha256": hashlib.sha256(raw).hexdigest(),
        "body_bytes": len(raw),
        "body_excerpt": excerpt(parsed if parsed is not None else text),
    }


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One verifying TLS context per process: building one per client costs ~100 ms of CPU."""
    return ssl.create_default_context()


def _check_url(url: Any) -> httpx.URL:
    if not isinstance(url, str) or not url:
        raise ActuatorError(f"params.url: must be a non-empty string, got {url!r}")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ActuatorError(f"params.url: invalid URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise ActuatorError(f"params.url: scheme must be http or https, got {parsed.scheme!r}")
    if not parsed.host:
        raise ActuatorError(f"params.url: no host in {url!r}")
    return parsed


def _capture(resp: httpx.Response) -> tuple[Any, str]:
    text = resp.text[:MAX_CAPTURE]
    try:
        return resp.json(), text
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return None, text


def _refusal(url: str, ctx: StepContext) -> str | None:
    """Why the executor's policy forbids calling ``url`` (None: it may be called)."""
    if ctx.admin_hosts is None:
        return None
    if not ctx.admin_url:
        return f"refused: service {ctx.service} has no admin_url (neither configured nor registered)"
    problem = url_problem(url, ctx.admin_hosts, allow_query=True)
    if problem is not None:
        return f"refused: {url}: {problem}"
    if not under_admin_url(url, ctx.admin_url):
        return f"refused: {url} is not under the admin URL of {ctx.service}"
    return None


class _Http(Actuator):
    method: ClassVar[str]

    def check(self, params: dict[str, Any]) -> None:
        unknown = set(params) - {"url", "json", "headers", "expect_status"}
        if unknown:
            raise ActuatorError(f"params: unknown field(s) {sorted(unknown)} for {self.name}")
        _check_url(params.get("url"))
        if "expect_status" in params and not isinstance(params["expect_status"], int):
            raise ActuatorError(f"params.expect_status: must be an integer, got {params['expect_status']!r}")

    async def run(self, params: dict[str, Any], ctx: StepContext, timeout: float) -> StepResult:
        self.check(params)
        url = _check_url(params["url"])
        refused = _refusal(str(url), ctx)
        if refused is not None:
            return StepResult(ok=False, error=refused, detail={"url": str(url), "refused": True})
        if ctx.allowed_hosts and url.host not in ctx.allowed_hosts:
            return StepResult(
                ok=False, error=f"host {url.host} is not the service's admin host", detail={"url": str(url)}
            )
        t0 = time.monotonic()
        detail: dict[str, Any] = {"method": self.method, "url": str(url)}
        try:
            async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, verify=tls_context()) as client:
                headers = dict(params.get("headers") or {})
                if ctx.idempotency_key is not None:
                    headers[IDEMPOTENCY_HEADER] = ctx.idempotency_key
                    detail["idempotency_key"] = ctx.idempotency_key
                resp = await client.request(self.method, url, json=params.get("json"), headers=headers)
                for _ in range(MAX_REDIRECTS):
                    if not resp.is_redirect:
                        break
                    follow = resp.next_request
                    target = follow.url if follow is not None else None
                    if (
                        follow is None
                        or follow.url.host != url.host
                        or follow.url.port != url.port
                        or _refusal(str(follow.url), ctx) is not None
                    ):
                        detail["status"] = resp.status_code
                        return StepResult(
                            ok=False,
                            detail=detail,
                            duration_seconds=time.monotonic() - t0,
                            error=f"redirect to another host refused: {target}",
                        )
                    resp = await client.send(follow)
        except httpx.TimeoutException as exc:
            return StepResult(
                ok=False,
                detail=detail,
                error=f"timeout after {timeout}s: {exc!r}",
                duration_seconds=time.monotonic() - t0,
            )
        except httpx.HTTPError as exc:
            return StepResult(
                ok=False, detail=detail, error=f"http error: {exc!r}", duration_seconds=time.monotonic() - t0
            )
        body, text = _capture(resp)
        detail.update(status=resp.status_code, **body_record(resp, body, text))
        expected = params.get("expect_status")
        ok = resp.status_code == expected if expected is not None else resp.is_success
        return StepResult(
            ok=ok,
            value=body,
            detail=detail,
            duration_seconds=time.monotonic() - t0,
            error=None if ok else f"unexpected status {resp.status_code}",
        )


class HttpGet(_Http):
    name = "http.get"
    method = "GET"


class HttpPost(_Http):
    name = "http.post"
    method = "POST"
