"""http.get / http.post against a real local aiohttp server."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from metaheal.agents.executor.actuators import StepContext, get_actuator
from metaheal.broker import free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def server():
    seen: list[tuple[str, str, dict | None]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        seen.append((request.method, request.path, body))
        if request.path == "/ok":
            return web.json_response({"instances": 3, "echo": body})
        if request.path == "/key":
            return web.json_response({"key": request.headers.get("Idempotency-Key")})
        if request.path == "/text":
            return web.Response(text="plain")
        if request.path == "/boom":
            return web.json_response({"error": "x"}, status=500)
        if request.path == "/same":
            raise web.HTTPFound("/ok")
        if request.path == "/elsewhere":
            raise web.HTTPFound("http://example.invalid/steal")
        if request.path == "/admin/outside":
            raise web.HTTPFound("/private")  # same host, out of the admin path
        if request.path == "/slow":
            await asyncio.sleep(5)
        return web.Response(status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


CTX = StepContext(service="api")


async def test_get_captures_json(server):
    url, _ = server
    res = await get_actuator("http.get").run({"url": f"{url}/ok"}, CTX, 2)
    assert res.ok and res.value["instances"] == 3 and res.detail["status"] == 200


async def test_post_sends_json_and_text_is_captured(server):
    url, seen = server
    res = await get_actuator("http.post").run({"url": f"{url}/ok", "json": {"delta": 2}}, CTX, 2)
    assert res.ok and res.value["echo"] == {"delta": 2} and seen[-1] == ("POST", "/ok", {"delta": 2})
    res = await get_actuator("http.get").run({"url": f"{url}/text"}, CTX, 2)
    assert res.ok and res.value is None and res.detail["body_excerpt"] == "plain"


async def test_error_status_fails_unless_expected(server):
    url, _ = server
    res = await get_actuator("http.get").run({"url": f"{url}/boom"}, CTX, 2)
    assert not res.ok and "500" in res.error and res.detail["body_excerpt"] == '{"error": "x"}'
    res = await get_actuator("http.get").run({"url": f"{url}/boom", "expect_status": 500}, CTX, 2)
    assert res.ok


async def test_redirects_only_to_the_same_host(server):
    url, seen = server
    res = await get_actuator("http.get").run({"url": f"{url}/same"}, CTX, 2)
    assert res.ok and res.value["instances"] == 3
    res = await get_actuator("http.get").run({"url": f"{url}/elsewhere"}, CTX, 2)
    assert not res.ok and "redirect to another host refused" in res.error
    assert all(path != "/steal" for _, path, _ in seen)


async def test_timeout_is_a_failed_result(server):
    url, _ = server
    res = await get_actuator("http.get").run({"url": f"{url}/slow"}, CTX, 0.3)
    assert not res.ok and "timeout" in res.error and res.duration_seconds < 2


async def test_hosts_outside_the_service_are_refused(server):
    url, seen = server
    n = len(seen)
    res = await get_actuator("http.get").run(
        {"url": f"{url}/ok"}, StepContext(service="api", allowed_hosts=frozenset({"svc"})), 2
    )
    assert not res.ok and "not the service's admin host" in res.error and len(seen) == n


async def test_connection_refused_is_a_failed_result():
    res = await get_actuator("http.get").run({"url": f"http://127.0.0.1:{free_port()}/x"}, CTX, 1)
    assert not res.ok and "http error" in res.error


async def test_post_carries_the_idempotency_key_header(server):
    url, _ = server
    ctx = StepContext(service="api", idempotency_key="plan-1/1")
    keyed = await get_actuator("http.post").run({"url": f"{url}/key", "json": {"delta": 2}}, ctx, 2)
    assert keyed.ok and keyed.value == {"key": "plan-1/1"} and keyed.detail["idempotency_key"] == "plan-1/1"
    plain = await get_actuator("http.post").run({"url": f"{url}/key", "json": {"delta": 2}}, CTX, 2)
    assert plain.ok and plain.value == {"key": None}


async def test_under_the_executor_every_url_is_checked_before_the_call(server):
    """With the allow-list in the context, a URL outside the admin URL, with userinfo or a fragment, or at a
    metadata address is refused before any request, and a redirect out of the admin path is not followed."""
    url, seen = server
    ctx = StepContext(service="api", admin_url=f"{url}/admin", admin_hosts=("127.0.0.0/8", "169.254.0.0/16"))
    ok = await get_actuator("http.get").run({"url": f"{url}/admin/ok?verbose=1"}, ctx, 2)
    assert ok.detail["status"] == 404 and seen[-1][:2] == ("GET", "/admin/ok")  # under the admin URL: called
    calls = len(seen)
    refused = {
        f"{url}/private": "is not under the admin URL of api",
        f"{url}/administrator": "is not under the admin URL of api",
        f"{url}/admin/x#frag": "fragment",
        url.replace("http://", "http://u:p@") + "/admin/x": "userinfo",
        "http://169.254.169.254/admin/x": "link-local or cloud-metadata address",
        "http://10.0.0.1/admin/x": "not on executor.admin_hosts",
    }
    for target, why in refused.items():
        res = await get_actuator("http.post").run({"url": target, "json": {}}, ctx, 2)
        assert not res.ok and res.error.startswith("refused") and why in res.error, (target, res.error)
    assert len(seen) == calls  # not one request
    res = await get_actuator("http.get").run({"url": f"{url}/admin/outside"}, ctx, 2)
    assert not res.ok and "redirect" in res.error and seen[-1][1] == "/admin/outside"
    none = StepContext(service="ghost", admin_url=None, admin_hosts=("127.0.0.0/8",))
    res = await get_actuator("http.post").run({"url": f"{url}/ok", "json": {}}, none, 2)
    assert not res.ok and "neither configured nor registered" in res.error and seen[-1][1] == "/admin/outside"
