"""Approvals and policies under attack: decisions written to ``<prefix>approvals`` by a plain producer.

The executor runs for real against the embedded broker and a real local HTTP service (the
executor tests' :class:`FakeService`); for each attack the test shows that no HTTP call was
made and that the ledger holds a ``trust_violation`` naming the reason. The last test of
each group shows the legitimate path still works: an operator's approval is honoured.

Before: a decision signed plan_id/request_id only, so an approval given before a re-plan
approved a different playbook; ``decided_at`` was not compared with ``requested_at``;
replay protection lived in memory; a key revoked in the key registry still approved; a
malformed operator key crashed the plan task; a kill switch engaged while a plan awaited
approval did not stop it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from metaheal.agents.executor.approvals import build_request, load_signing_key, plan_hash, sign_decision, sign_for
from metaheal.agents.executor.planner import plan_id_for
from metaheal.agents.executor.service import Executor
from metaheal.cli import app
from metaheal.config import OperatorSettings, ServiceSettings, Settings
from metaheal.events import AgenticPlan, ApprovalDecision, Directive
from metaheal.kafka.serializers import AvroSerializer
from metaheal.ledger.keys import init_operator_key, init_system_keys, revoke_key
from tests.agents.executor.conftest import FakeService, fast_playbooks, send_directive, spawn_executor
from tests.agents.executor.test_pipeline import flag_directive, pending_request, wait_until

from .conftest import attack

pytestmark = [pytest.mark.broker, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]

_ser_decision = AvroSerializer(ApprovalDecision)


def forge(settings: Settings, *decisions: ApprovalDecision) -> None:
    """The attacker's client: raw bytes onto the approvals topic."""
    attack(settings, settings.topics.name("approvals"), [(d.plan_id.encode(), _ser_decision(d)) for d in decisions])


def posts(svc: FakeService) -> int:
    return sum(n for k, n in svc.calls.items() if k.startswith("POST"))


async def violations(ex: Executor, cycle_id: str) -> list[dict[str, Any]]:
    return [json.loads(e.payload) for e in await ex.log.replay_cycle(cycle_id) if e.action == "trust_violation"]


@pytest.fixture
async def env(topics: Settings, tmp_path: Path):
    init_system_keys(topics.keys)
    alice_key, alice_pub = init_operator_key(topics.keys, "alice")
    svc = FakeService()
    async with svc.running(topics):
        topics.services = [ServiceSettings(name="api", admin_url=svc.url, dependencies=["db"])]
        topics.operators = [OperatorSettings(name="alice", public_key=alice_pub, services=["api"])]
        topics.playbooks = fast_playbooks(tmp_path / "playbooks")
        topics.executor.approval_expiry_seconds = 30
        yield topics, svc, load_signing_key(alice_key)


async def violation(ex: Executor, cycle_id: str, prefix: str) -> str:
    """The first ``trust_violation`` reason of the cycle starting with ``prefix`` (waits for it)."""

    async def find() -> str | None:
        for v in await violations(ex, cycle_id):
            if str(v.get("reason", "")).startswith(prefix):
                return v["reason"]
        return None

    deadline = asyncio.get_running_loop().time() + 30
    while asyncio.get_running_loop().time() < deadline:
        found = await find()
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"no trust_violation starting with {prefix!r}: {await violations(ex, cycle_id)}")


async def awaiting(ex: Executor, settings: Settings) -> tuple[Directive, Any, Any]:
    """A plan that needs an operator (tight guardrails, medium impact): its directive, task and request."""
    d = flag_directive(guardrail_level="tight", confidence=0.97)
    task = await ex.submit(d)
    req = await pending_request(settings, ex.state.get(d.directive_id).plan_id)
    return d, task, req


# --- the decision binds the plan -------------------------------------------------------------------


async def test_approval_signed_for_another_plan_under_the_same_plan_id_is_refused(env) -> None:
    settings, svc, alice = env
    ex = Executor(settings)
    await ex.start()
    try:
        d, task, req = await awaiting(ex, settings)
        plan = AgenticPlan.model_validate_json(ex.state.get(d.directive_id).plan_json)
        assert req.plan_hash == plan_hash(plan) and req.nonce
        # alice once approved another plan under this plan id (before a re-plan): restart_service
        other = build_request(plan.model_copy(update={"selected_playbook": "restart_service"}), ["x"], 60)
        old_approval = sign_for(alice, other, operator="alice", decision="approve")
        # and a decision carrying this request's nonce but the other plan's hash
        mixed = sign_decision(
            alice, plan_id=req.plan_id, request_id=req.request_id, operator="alice", decision="approve",
            plan_hash=other.plan_hash, nonce=req.nonce,
        )  # fmt: skip
        forge(settings, old_approval, mixed)
        await violation(ex, d.cycle_id, "forged: decision signs nonce")
        await violation(ex, d.cycle_id, "plan_mismatch: decision approves plan hash")
        assert posts(svc) == 0 and not task.done()
        # the legitimate path: alice approves the plan she is shown; it runs
        forge(settings, sign_for(alice, req, operator="alice", decision="approve", reason="checked"))
        outcome = await task
        assert outcome.result == "success" and outcome.trust_decision == "approved_by:alice"
        assert svc.calls["POST /flags/rollback"] == 1
    finally:
        await ex.close()


async def test_backdated_decision_and_revoked_key_are_refused(env) -> None:
    settings, svc, alice = env
    settings.executor.approval_expiry_seconds = 8
    ex = Executor(settings)
    await ex.start()
    try:
        d, task, req = await awaiting(ex, settings)
        backdated = sign_for(alice, req, operator="alice", decision="approve", decided_at=req.requested_at - 60)
        forge(settings, backdated)
        await violation(ex, d.cycle_id, "backdated: decided_at")
        alice_id = backdated.key_id
        revoke_key(settings.keys, alice_id)  # alice's key is compromised: revoked in the key registry
        forge(settings, sign_for(alice, req, operator="alice", decision="approve"))
        outcome = await task
        assert outcome.result == "expired" and posts(svc) == 0
        reasons = [v["reason"] for v in await violations(ex, d.cycle_id)]
        assert any(r.startswith("backdated: decided_at") for r in reasons), reasons
        assert any(r.startswith(f"revoked: key {alice_id} of operator alice") for r in reasons), reasons
    finally:
        await ex.close()


async def test_replayed_decision_after_restart_is_refused(env, tmp_path: Path) -> None:
    """The executor takes in an approval and dies before it acts; after the restart the same decision
    (on the topic, and sent again by the attacker) is refused as replayed: the ledger remembers it."""
    settings, svc, alice = env
    settings.ledger.writer_lease_seconds = 1.5  # the killed writer's ledger lease lapses sooner
    proc = spawn_executor(settings, tmp_path, crash="after_approval")
    try:
        d = flag_directive(guardrail_level="tight", confidence=0.97)
        send_directive(settings, d)
        req = await pending_request(settings, plan_id_for(d.directive_id))
        used = sign_for(alice, req, operator="alice", decision="approve", reason="go")
        forge(settings, used)
        await asyncio.to_thread(proc.wait, 60)  # killed at the crash point, after approval_received
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
    assert posts(svc) == 0
    ex = Executor(settings)
    await ex.start()  # recovers the plan: it was awaiting approval
    try:
        forge(settings, used)  # the attacker replays the used decision as well
        why = await violation(ex, d.cycle_id, "replayed")
        assert why == f"replayed: decision {used.decision_id} was already used"
        await asyncio.sleep(1.0)
        assert posts(svc) == 0
        # a fresh decision by the operator is honoured
        forge(settings, sign_for(alice, req, operator="alice", decision="approve", reason="again"))
        await wait_until(
            lambda: ex.state.get(d.directive_id) and ex.state.get(d.directive_id).status == "done", 60, "plan done"
        )
        assert svc.calls["POST /flags/rollback"] == 1
        assert ex.state.get(d.directive_id).result == "success"
    finally:
        await ex.close()


async def test_malformed_operator_key_in_config_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "metaheal.yaml"
    cfg.write_text(yaml.safe_dump({"operators": [{"name": "alice", "public_key": "c0ffee-not-a-key"}]}))
    res = CliRunner().invoke(app, ["config", "check", str(cfg)])
    assert res.exit_code == 1
    assert "operators.0.public_key" in res.output and "hex Ed25519 public key" in res.output, res.output
    run = subprocess.run(
        [sys.executable, "-m", "metaheal.agents.executor.service", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("METAHEAL_")},
    )
    assert run.returncode != 0 and "operators.0.public_key" in run.stderr


# --- policies right before every mutating step ----------------------------------------------------


async def test_kill_switch_engaged_during_the_approval_wait_stops_the_plan(env, tmp_path: Path) -> None:
    settings, svc, alice = env
    switch = tmp_path / "KILL"
    settings.executor.kill_switch_file = switch
    settings.executor.max_concurrent_plans = 1
    web = FakeService(name="web")
    async with web.running(settings):
        settings.services = [*settings.services, ServiceSettings(name="web", admin_url=web.url)]
        ex = Executor(settings)
        await ex.start()
        try:
            d, task, req = await awaiting(ex, settings)
            # waiting for a human holds no concurrency slot: another plan (one slot in all) runs meanwhile
            other = flag_directive(service="web", guardrail_level="loose", confidence=0.9)
            assert (await asyncio.wait_for(await ex.submit(other), 60)).result == "success"
            assert web.calls["POST /flags/rollback"] == 1 and not task.done()
            switch.touch()
            outcome = await asyncio.wait_for(task, 20)
            assert outcome.result == "denied" and posts(svc) == 0
            v = await violations(ex, d.cycle_id)
            assert v[-1]["violations"] == ["kill_switch"], v
            assert "kill switch engaged while the plan awaited approval" in v[-1]["reasons"][0]
            # an approval arriving now changes nothing
            forge(settings, sign_for(alice, req, operator="alice", decision="approve"))
            await asyncio.sleep(1.0)
            assert posts(svc) == 0
        finally:
            await ex.close()


class SwitchingService(FakeService):
    """A real service whose flag rollback fails and, while it does, an operator engages the kill switch."""

    switch: Path | None = None

    async def _apply(self, key: str, path: str, body: dict) -> Any:
        if key == "POST /flags/rollback" and self.switch is not None:
            self.switch.touch()
        return await super()._apply(key, path, body)


async def test_kill_switch_stops_the_rollback_too(topics: Settings, tmp_path: Path) -> None:
    """The first step fails and the kill switch is engaged meanwhile: the rollback step is not run either."""
    init_system_keys(topics.keys)
    switch = tmp_path / "KILL"
    svc = SwitchingService()
    svc.switch = switch
    svc.fail.add("POST /flags/rollback")
    async with svc.running(topics):
        topics.services = [ServiceSettings(name="api", admin_url=svc.url)]
        topics.playbooks = fast_playbooks(tmp_path / "playbooks")
        topics.executor.kill_switch_file = switch
        ex = Executor(topics)
        await ex.start()
        try:
            d = flag_directive(guardrail_level="loose", confidence=0.9)
            outcome = await asyncio.wait_for(await ex.submit(d), 60)
            assert svc.calls["POST /flags/rollback"] == 1 and svc.calls["POST /flags/restore"] == 0
            assert outcome.result == "failed", outcome.rationale
            v = await violations(ex, d.cycle_id)
            assert v[-1]["phase"] == "before_step" and v[-1]["rollback"] is True, v
            assert v[-1]["violations"] == ["kill_switch"], v
        finally:
            await ex.close()
