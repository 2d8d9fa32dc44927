"""Webhooks against a real local HTTP receiver: approval_requested carries a working approve_command."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from metaheal.agents.executor.service import Executor
from metaheal.broker import free_port
from metaheal.config import WebhookSettings
from metaheal.notify import Notifier
from metaheal.observability import WEBHOOK_DELIVERIES
from metaheal.watch import EventWatcher

from .conftest import DEFAULT_PLAYBOOKS, write_config
from .test_pipeline import flag_directive, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]


class Receiver:
    """A real HTTP server that records JSON POSTs; the first ``fail_first`` requests get a 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.requests: list[tuple[dict, dict]] = []  # (headers, body)
        self.port = free_port()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((dict(request.headers), body))
        if len(self.requests) <= self.fail_first:
            return web.json_response({"error": "try again"}, status=500)
        return web.json_response({"ok": True})

    def bodies(self, event: str) -> list[dict]:
        return [b for h, b in self.requests if b.get("event") == event]


def delivered(event: str, status: str) -> float:
    return WEBHOOK_DELIVERIES.labels(event, status)._value.get()


def patient_playbooks(folder: Path) -> Path:
    """The default playbooks with short verification windows but generous step timeouts: the operator's
    command is a new Python process, and on a busy machine it competes with the executor for the CPU."""
    folder.mkdir(parents=True, exist_ok=True)
    for src in DEFAULT_PLAYBOOKS.glob("*.yaml"):
        text = src.read_text().replace("within: 60", "within: 3")
        (folder / src.name).write_text(text.replace("timeout: 30", "timeout: 20"))
    return folder


async def test_approval_requested_webhook_carries_a_working_approve_command(
    env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, svc, alice_key = env
    settings.playbooks = patient_playbooks(tmp_path / "patient-playbooks")
    executor = Executor(settings)
    await executor.start()
    monkeypatch.setenv("HOOK_TOKEN", "s3cret")
    receiver = Receiver(fail_first=1)  # the first delivery is retried
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", receiver.port).start()
    dead_port = free_port()  # nothing listens here: every attempt fails
    settings.notifications.webhooks = [
        WebhookSettings(
            url=f"http://127.0.0.1:{receiver.port}/hook",
            events=["approval_requested", "outcome_failed"],
            headers={"Authorization": "Bearer ${HOOK_TOKEN}"},
        ),
        WebhookSettings(url=f"http://127.0.0.1:{dead_port}/hook", events=["approval_requested"], max_attempts=2),
    ]
    cfg = write_config(settings, tmp_path / "metaheal.yaml")
    failed_before = delivered("approval_requested", "failed")
    ok_before = delivered("approval_requested", "delivered")
    notifier = Notifier(settings, config_path=str(cfg)).start()
    watcher = EventWatcher(settings, ["executor"], [notifier.notice]).start()
    try:
        await asyncio.to_thread(watcher.caught_up.wait, 30)
        d = flag_directive(guardrail_level="tight", confidence=0.97)
        task = await executor.submit(d)
        await wait_until(lambda: receiver.bodies("approval_requested")[1:], 30, "the retried approval_requested")
        headers, body = next((h, b) for h, b in receiver.requests[1:] if b["event"] == "approval_requested")
        plan_id = executor.state.get(d.directive_id).plan_id
        assert headers["Authorization"] == "Bearer s3cret"  # ${HOOK_TOKEN} from the environment
        assert body["plan_id"] == plan_id and body["service"] == "api" and body["playbook"] == "rollback_flag"
        assert body["expires_at"] > body["ts"] and body["summary"]
        assert body["approve_command"] in body["text"]  # what Slack/Teams show
        assert body["approve_command"].startswith(f"metaheal approvals approve {plan_id} --key ")
        assert not task.done()  # waiting for a human

        bin_dir = str(Path(sys.executable).parent)
        env_vars = {k: v for k, v in os.environ.items() if not k.startswith("METAHEAL_")}
        env_vars.update(PATH=f"{bin_dir}:{env_vars.get('PATH', '')}")
        shown = await asyncio.to_thread(
            subprocess.run,
            ["metaheal", "approvals", "show", plan_id, "--json", "--config", str(cfg)],
            env=env_vars,
            capture_output=True,
            text=True,
        )
        assert shown.returncode == 0, shown.stderr
        view = json.loads(shown.stdout)
        assert view["state"] == "pending approval" and view["playbook"] == "rollback_flag"
        assert view["steps"] and view["rollback"] and view["risk"]["impact"] == "medium"
        assert "exceeds tight limit" in view["approval"]["reason"]  # why a human is asked
        assert view["provenance"]["cycle_id"] == d.cycle_id

        # the operator runs the command as sent, with their key in METAHEAL_OPERATOR_KEY
        env_vars["METAHEAL_OPERATOR_KEY"] = str(alice_key)
        ran = await asyncio.to_thread(
            subprocess.run, ["bash", "-c", body["approve_command"]], env=env_vars, capture_output=True, text=True
        )
        assert ran.returncode == 0, ran.stderr
        assert f"approve {plan_id} by alice" in ran.stdout
        outcome = await asyncio.wait_for(task, 60)
        assert outcome.result == "success" and outcome.trust_decision == "approved_by:alice", outcome.rationale
        assert svc.calls["POST /flags/rollback"] == 1

        await wait_until(lambda: delivered("approval_requested", "failed") > failed_before, 30, "the dead hook failed")
        assert delivered("approval_requested", "delivered") == ok_before + 1
        assert delivered("approval_requested", "failed") == failed_before + 1
        assert len(receiver.bodies("approval_requested")) == 2  # one 500, one retry: no duplicate deliveries
    finally:
        watcher.stop()
        notifier.stop()
        await runner.cleanup()
        await executor.close()
