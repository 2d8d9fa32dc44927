"""``http.get`` / ``http.post``: call a service's admin API with httpx.

Redirects are followed only to the same host (a redirect elsewhere is a failed
step, not a request to an unknown party), responses are captured for the ledger
(status and body, truncated), and non-2xx statuses fail the step unless
``expect_status`` says otherwise.

>>> HttpPost().check({"url": "http://svc:8080/scale", "json": {"delta": 2}})
>>> HttpGet().check({"url": "file:///etc/passwd"})
Traceback (most recent call last):
...
metaheal.errors.ActuatorError: params.url: scheme must be http or https, got 'file'
"""

from __future__ import annotations

import functools
import json
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

MAX_CAPTURE = 4096
MAX_REDIRECTS = 3


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
                    if follow is None or follow.url.host != url.host or follow.url.port != url.port:
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
        detail.update(status=resp.status_code, body=body if body is not None else text)
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
