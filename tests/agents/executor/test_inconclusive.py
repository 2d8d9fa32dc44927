"""Inconclusive is not failure: when telemetry vanishes after a change, the change stays and a human is asked.

Real broker, real ledger, a real HTTP service whose metrics agent dies with the fix (``mute_on``).
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metaheal.agents.executor.approvals import is_verdict_request
from metaheal.agents.executor.service import Executor
from metaheal.cli import app
from metaheal.events import SignedOutcome
from tests.agents.executor.conftest import send_directive, spawn_executor, write_config
from tests.agents.executor.test_pipeline import (
    actions,
    flag_directive,
    pending_request,
    read_all,
    wait_until,
)

pytestmark = [pytest.mark.broker, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

FIX, UNDO = "POST /flags/rollback", "POST /flags/restore"


def outcomes_of(settings, plan_id: str) -> list[SignedOutcome]:
    return [o for o in read_all(settings, "outcomes") if isinstance(o, SignedOutcome) and o.plan_id == plan_id]


async def kept_unverified(env, executor: Executor, *, expiry: float = 30.0):
    """Submit a correct flag rollback whose telemetry dies with it; return (task, plan id, verdict request)."""
    settings, svc, _ = env
    svc.mute_on.add(FIX)
    executor.playbooks["rollback_flag"].verdict_expiry_seconds = expiry
    d = flag_directive()
    task = await executor.submit(d)
    plan_id = executor.state.get(d.directive_id).plan_id
    req = await pending_request(settings, plan_id)
    return d, task, plan_id, req


async def test_telemetry_stops_after_a_correct_fix_no_rollback_outcome_inconclusive_request(env, executor: Executor):
    settings, svc, _ = env
    d, task, plan_id, req = await kept_unverified(env, executor, expiry=4.0)
    assert is_verdict_request(req) and req.service == "api" and req.playbook == "rollback_flag"
    # the evidence: what was expected, what is missing since when
    assert "expected 3 sample(s) of error_rate <= 0.05 from api; none since" in req.reason, req.reason
    assert "last sample at" in req.reason and "unanswered it ends as keep" in req.plan_summary
    interim = (await wait_until(lambda: outcomes_of(settings, plan_id), blocking=True, what="interim outcome"))[0]
    assert interim.result == "inconclusive" and interim.verification_passed is None
    assert interim.verdict_request_id == req.request_id
    assert executor.state.get(d.directive_id).status == "awaiting_verdict"
    assert svc.calls[FIX] == 1 and svc.calls[UNDO] == 0 and svc.fixed
    outcome = await task  # nobody answers: the request expires to the playbook default, keep
    assert svc.calls[UNDO] == 0 and svc.fixed
    assert outcome.result == "inconclusive" and outcome.verdict_request_id is None
    assert outcome.outcome_id != interim.outcome_id and outcome.settled_after_seconds >= 3.5
    story = await actions(executor, d.cycle_id)
    assert ("verification_result", "inconclusive") in story
    assert story[-4:] == [
        ("verdict_requested", "pending"),
        ("execution_outcome", "inconclusive"),
        ("verdict_expired", "keep"),
        ("execution_outcome", "inconclusive"),
    ], story
    assert not any(a == "rollback_executed" for a, _ in story)
    assert executor.state.get(d.directive_id).status == "done"


async def test_operator_keeps_the_change_plan_ends_success_confirmed_by_operator(
    env, executor: Executor, tmp_path: Path
):
    settings, svc, alice_key = env
    cfg = write_config(settings, tmp_path / "metaheal.yaml")
    d, task, plan_id, req = await kept_unverified(env, executor)
    runner = CliRunner()
    listed = await asyncio.to_thread(runner.invoke, app, ["approvals", "list", "--json", "--config", str(cfg)])
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["plan_id"], r["kind"], r["state"]) for r in rows] == [(plan_id, "verdict", "pending")], listed.output
    interim = (await wait_until(lambda: outcomes_of(settings, plan_id), blocking=True, what="interim outcome"))[0]
    # `metaheal status` shows the change waiting for its verdict, with the evidence, and the interim outcome
    shown = await asyncio.to_thread(runner.invoke, app, ["status", "--json", "--config", str(cfg)])
    snap = json.loads(shown.stdout)
    [waiting] = snap["awaiting_verdict"]
    assert (waiting["plan_id"], waiting["request_id"], waiting["on_expiry"]) == (plan_id, req.request_id, "keep")
    assert "error_rate" in waiting["evidence"] and snap["pending_approvals"] == []
    assert [o["result"] for o in snap["last_outcomes"] if o["plan_id"] == plan_id] == ["inconclusive"]
    shown = await asyncio.to_thread(runner.invoke, app, ["status", "--config", str(cfg)], env={"COLUMNS": "400"})
    assert "Awaiting verdict" in shown.stdout and "inconclusive (change kept, awaiting verdict)" in shown.stdout
    kept = await asyncio.to_thread(
        runner.invoke,
        app,
        ["approvals", "keep", plan_id, "--key", str(alice_key), "--reason", "error graphs flat", "--config", str(cfg)],
    )
    assert kept.exit_code == 0 and f"keep {plan_id} by alice" in kept.stdout, kept.output
    outcome = await task
    assert outcome.result == "success" and outcome.confirmed_by == "alice"
    assert outcome.verification_passed is None and outcome.settled_after_seconds > 0
    assert svc.calls[UNDO] == 0 and svc.fixed
    rec = executor.state.get(d.directive_id)
    assert rec.status == "done" and rec.result == "success_confirmed_by:alice"
    story = await actions(executor, d.cycle_id)
    assert story[-2:] == [("verdict_received", "keep"), ("execution_outcome", "success_confirmed_by:alice")]
    assert [o.outcome_id for o in outcomes_of(settings, plan_id)] == [interim.outcome_id, outcome.outcome_id]
    listed = await asyncio.to_thread(runner.invoke, app, ["approvals", "list", "--json", "--config", str(cfg)])
    assert listed.stdout.strip() == ""  # answered: nothing pending
    shown = await asyncio.to_thread(runner.invoke, app, ["status", "--json", "--config", str(cfg)])
    assert json.loads(shown.stdout)["awaiting_verdict"] == []


async def test_telemetry_resuming_healthy_turns_it_into_success(env, executor: Executor):
    settings, svc, _ = env
    d, task, plan_id, _ = await kept_unverified(env, executor)
    await asyncio.sleep(1.0)
    svc.muted = False  # the metrics agent is back; error rate is healthy (0.01 <= 0.05)
    outcome = await task
    assert outcome.result == "success" and outcome.verification_passed is True and outcome.confirmed_by is None
    assert outcome.settled_after_seconds >= 1.0
    assert svc.calls[UNDO] == 0
    entries = await executor.log.replay_cycle(d.cycle_id)
    late = [json.loads(e.payload) for e in entries if e.action == "verification_result" and e.result == "pass"]
    assert late and all(v.get("late") for v in late) and late[0]["observed"][-1] == pytest.approx(0.01)
    assert [o.result for o in outcomes_of(settings, plan_id)] == ["inconclusive", "success"]


async def test_telemetry_resuming_with_the_fault_still_present_fails_and_rolls_back(env, executor: Executor):
    settings, svc, _ = env
    svc.error_rate = 0.3  # the flag was not the cause: errors go on
    d, task, plan_id, _ = await kept_unverified(env, executor)
    assert svc.calls[UNDO] == 0
    svc.muted = False
    outcome = await task
    assert outcome.result == "rolled_back" and outcome.verification_passed is False
    assert svc.calls[UNDO] == 1 and not svc.fixed
    entries = await executor.log.replay_cycle(d.cycle_id)
    fail = [json.loads(e.payload) for e in entries if e.action == "verification_result" and e.result == "fail"]
    assert fail and fail[0]["late"] and min(fail[0]["observed"]) == pytest.approx(0.3)
    assert [o.result for o in outcomes_of(settings, plan_id)] == ["inconclusive", "rolled_back"]


async def test_on_inconclusive_rollback_restores_the_old_behaviour(env, executor: Executor):
    _, svc, _ = env
    svc.mute_on.add(FIX)
    executor.playbooks["rollback_flag"].on_inconclusive = "rollback"
    outcome = await (await executor.submit(flag_directive()))
    assert outcome.result == "rolled_back" and outcome.verification_passed is None
    assert svc.calls[UNDO] == 1


async def test_a_restarted_executor_resumes_the_wait_for_a_verdict(env, tmp_path: Path):
    settings, svc, alice_key = env
    svc.mute_on.add(FIX)
    first = Executor(settings)
    await first.start()
    d = flag_directive()
    await first.submit(d)
    plan_id = first.state.get(d.directive_id).plan_id
    req = await pending_request(settings, plan_id)
    await wait_until(lambda: first.state.get(d.directive_id).status == "awaiting_verdict", what="awaiting_verdict")
    await first.close()  # gone while the change waits for its verdict
    second = Executor(settings)
    await second.start()  # recovers in-flight plans from the durable state
    try:
        await wait_until(lambda: second.state.get(d.directive_id).status == "awaiting_verdict", what="recovery")
        cfg = write_config(settings, tmp_path / "metaheal.yaml")
        args = ["approvals", "keep", plan_id, "--key", str(alice_key), "--config", str(cfg)]
        kept = await asyncio.to_thread(CliRunner().invoke, app, args)
        assert kept.exit_code == 0, kept.output
        await wait_until(lambda: second.state.get(d.directive_id).status == "done", what="the kept plan to end")
        rec = second.state.get(d.directive_id)
        assert rec.result == "success_confirmed_by:alice" and svc.calls[FIX] == 1 and svc.calls[UNDO] == 0
        story = await actions(second, d.cycle_id)
        assert ("plan_recovered", "await_verdict") in story and story[-1] == (
            "execution_outcome",
            "success_confirmed_by:alice",
        )
        assert [o.result for o in outcomes_of(settings, plan_id)] == ["inconclusive", "success"]
        assert req.request_id == f"verdict-{plan_id}"
    finally:
        await second.close()


async def test_sigkill_before_the_interim_outcome_is_published_recovers_it_once(env, tmp_path: Path):
    """Killed between the inconclusive outcome's ledger entry and its publication (and before the verdict
    request went out): the restarted executor publishes both once and goes on waiting for the verdict."""
    settings, svc, alice_key = env
    svc.mute_on.add(FIX)
    settings.ledger.writer_lease_seconds = 1.5  # the killed writer's ledger lease lapses sooner
    cfg = write_config(settings, tmp_path / "metaheal.yaml")
    proc = spawn_executor(settings, tmp_path, crash="before_publish")
    try:
        d = flag_directive()
        send_directive(settings, d)
        assert await asyncio.to_thread(proc.wait, 60) == -signal.SIGKILL, (tmp_path / "executor.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    ex = Executor(settings)
    await ex.start()
    try:
        rec = await wait_until(lambda: ex.state.get(d.directive_id), what="the plan's state")
        plan_id = rec.plan_id
        interim = await wait_until(lambda: outcomes_of(settings, plan_id), 60, "interim outcome", blocking=True)
        req = await pending_request(settings, plan_id)  # the verdict request went out after all
        args = ["approvals", "keep", plan_id, "--key", str(alice_key), "--config", str(cfg)]
        kept = await asyncio.to_thread(CliRunner().invoke, app, args)
        assert kept.exit_code == 0, kept.output
        await wait_until(lambda: ex.state.get(d.directive_id).status == "done", what="the kept plan to end")
        story = await actions(ex, d.cycle_id)
    finally:
        await ex.close()
    assert [o.result for o in interim] == ["inconclusive"] and interim[0].verdict_request_id == req.request_id
    assert [o.result for o in outcomes_of(settings, plan_id)] == ["inconclusive", "success"]  # one of each
    assert [a for a, _ in story].count("execution_outcome") == 2  # the interim entry was not written again
    assert ("plan_recovered", "await_verdict") in story and svc.calls[FIX] == 1 and svc.calls[UNDO] == 0
