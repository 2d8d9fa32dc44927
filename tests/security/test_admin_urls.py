"""Registrations that try to redirect the executor, and admin-API answers that would leak through the ledger.

A plain producer writes ``ServiceRegistration`` JSON to ``<prefix>services``; the registry
follower (the one ``metaheal up`` runs, dead-lettering on) merges what it accepts into the
executor's settings, and the executor acts on a directive for each service against a real
local HTTP service. Before: ``...#`` or ``...?`` swallowed the playbook's path suffix, the
allowed host came from the same URL, userinfo and the cloud metadata address were accepted,
and the response body of a GET landed in the ledger verbatim.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from metaheal.agents.executor.service import Executor
from metaheal.broker import free_port
from metaheal.config import ServiceSettings, Settings
from metaheal.kafka import Producer
from metaheal.ledger.keys import init_system_keys
from metaheal.ledger.signing import RecordSigner
from metaheal.registry import RegistryFollower, merged_services, to_service
from tests.agents.executor.conftest import FakeService, fast_playbooks
from tests.agents.executor.test_pipeline import directive, flag_directive

from .conftest import dead_letters

pytestmark = [pytest.mark.broker, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]


def registration(name: str, admin_url: str) -> bytes:
    return json.dumps({"name": name, "admin_url": admin_url, "registered_by": "mallory", "ts": time.time()}).encode()


async def ledger(ex: Executor, cycle_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [(e.action, json.loads(e.payload)) for e in await ex.log.replay_cycle(cycle_id)]


async def test_registrations_that_redirect_the_executor_are_refused(topics: Settings, tmp_path: Path) -> None:
    init_system_keys(topics.keys)
    svc = FakeService()
    async with svc.running(topics):
        topics.playbooks = fast_playbooks(tmp_path / "playbooks")
        configured = [ServiceSettings(name="api", admin_url=svc.url)]
        topics.services = list(configured)
        registered: dict[str, ServiceSettings] = {}
        loop = asyncio.get_running_loop()

        def on_change(name: str, reg: Any) -> None:  # what metaheal up's runtime does with each registration
            def apply() -> None:
                if reg is None:
                    registered.pop(name, None)
                else:
                    registered[name] = to_service(reg)
                topics.services = merged_services(configured, registered.values())

            loop.call_soon_threadsafe(apply)

        follower = RegistryFollower(topics, on_change, dead_letter=True).start()
        ex = Executor(topics)
        await ex.start()
        try:
            swallowing = {
                "frag": f"{svc.url}/admin#",  # POST {{admin_url}}/flags/rollback would become POST /admin
                "query": f"{svc.url}/admin?x=",
                "creds": f"http://mallory:pw@127.0.0.1:{svc.port}",
            }
            outside = {
                "meta": "http://169.254.169.254/latest/meta-data",
                "meta6": "http://[fd00:ec2::254]/latest",
                "elsewhere": "http://10.9.8.7:8080",
            }
            # signed with the registrar key: what is refused here is the URL, not the writer (an unsigned
            # registration is refused before its URL is looked at: tests/security/test_signed_records.py)
            signer = RecordSigner(topics.keys, "registrar")
            with Producer(topics.kafka) as p:
                for n, u in {**swallowing, **outside}.items():
                    value = registration(n, u)
                    headers = signer.sign("service_registration", value, key=n, record_id=n)
                    p.send(topics.topics.name("services"), value, key=n, headers=headers)
            deadline = time.monotonic() + 30
            while not all(n in registered for n in outside) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert set(registered) == set(outside), registered
            letters = {(dl.key or b"").decode(): dl for dl in await asyncio.to_thread(dead_letters, topics)}
            assert "fragment (#) would swallow the playbook path" in letters["frag"].error
            assert "query (?) would swallow the playbook path" in letters["query"].error
            assert "userinfo (user@) is not allowed" in letters["creds"].error
            assert all(letters[n].reason == "invalid service registration" for n in swallowing)

            for name in swallowing:  # never registered: the executor does not act on them
                d = flag_directive(service=name, guardrail_level="loose")
                outcome = await asyncio.wait_for(await ex.submit(d), 30)
                assert outcome.result == "denied" and "not configured" in " ".join(outcome.rationale)
            expected = {
                "meta": "host 169.254.169.254 is a link-local or cloud-metadata address (169.254.0.0/16)",
                "meta6": "host fd00:ec2::254 is a link-local or cloud-metadata address",
                "elsewhere": "host 10.9.8.7 is not on executor.admin_hosts",
            }
            for name, reason in expected.items():
                d = flag_directive(service=name, guardrail_level="loose")
                outcome = await asyncio.wait_for(await ex.submit(d), 30)
                assert outcome.result == "denied", outcome.rationale
                story = await ledger(ex, d.cycle_id)
                violation = next(p for a, p in story if a == "trust_violation")
                assert violation["violations"] == ["admin_url"] and reason in violation["reasons"][0], violation
                assert not any(a == "step_executed" for a, _ in story)
            assert sum(svc.calls.values()) == 0  # not one request reached the service

            # listed or not, the metadata range is refused: the operator's allow-list cannot open it
            topics.executor.admin_hosts = [*topics.executor.admin_hosts, "169.254.0.0/16", "10.0.0.0/8"]
            d = flag_directive(service="meta", guardrail_level="loose")
            assert (await asyncio.wait_for(await ex.submit(d), 30)).result == "denied"

            # the legitimate path: the configured service is healed
            ok = await asyncio.wait_for(await ex.submit(directive()), 60)
            assert ok.result == "success" and svc.calls["POST /scale"] == 1
        finally:
            await ex.close()
            follower.stop()


async def test_response_bodies_reach_the_ledger_hashed_and_redacted(topics: Settings, tmp_path: Path) -> None:
    """An admin API that answers with secrets: the ledger gets the body's sha256 and a redacted excerpt."""
    init_system_keys(topics.keys)
    secret = "s3cr3t-db-pass"
    calls: list[str] = []

    async def capacity(request: web.Request) -> web.Response:
        calls.append(f"{request.method} {request.path}")
        if request.path == "/capacity":
            doc = {"instances": 3, "ready_instances": 3, "db_password": secret, "note": f"token={secret}"}
            return web.json_response({**doc, "padding": "x" * 5000})
        return web.json_response({"instances": 5})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", capacity)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        topics.playbooks = fast_playbooks(tmp_path / "playbooks")
        topics.services = [ServiceSettings(name="api", admin_url=f"http://127.0.0.1:{port}")]
        ex = Executor(topics)
        await ex.start()
        try:
            d = directive()
            await asyncio.wait_for(await ex.submit(d), 60)
            story = await ledger(ex, d.cycle_id)
        finally:
            await ex.close()
    finally:
        await runner.cleanup()
    assert "GET /capacity" in calls
    got = next(p for a, p in story if a == "step_executed" and p.get("phase") == "result" and p["action"] == "http.get")
    detail = got["detail"]
    assert len(detail["body_sha256"]) == 64 and detail["body_bytes"] > 5000
    assert len(detail["body_excerpt"]) <= 513 and '"db_password": "[redacted]"' in detail["body_excerpt"]
    assert secret not in json.dumps(story) and "body" not in detail
