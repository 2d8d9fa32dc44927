"""Issue 14's attacks against a running `metaheal up` (one process: streams worker, meta loop, executor) and a real
local HTTP fleet (`metaheal simulate`, its own process), played from outside with a plain producer and no keys.

Some records are there before `up` starts (executor state and window state are read when a component starts or is
rebalanced), the others arrive while it runs. Then, in the same `up`, a real fault is healed by a directive of the
meta loop. The fleet's admin servers count every mutating call by its Idempotency-Key (``<plan_id>/<step>``), so
"no HTTP call from a forged record" means: every call the fleet received belongs to a plan made for a directive
the meta loop issued (its `plan_created` and `directive_issued` ledger entries).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from metaheal.agents.meta.leader import LEADER_KEY
from metaheal.agents.meta.status import StatusClient
from metaheal.config import Settings
from metaheal.events import (
    Directive,
    DirectiveAdvice,
    LedgerEntry,
    SignedOutcome,
)
from metaheal.kafka import Admin, TopicSpec
from metaheal.kafka.serializers import AvroSerializer
from metaheal.registry import read_registry
from metaheal.streams.app import app_id
from tests.metaheal.test_up_simulate import CLI, SIM_ARGS, outcomes, stop, wait_for_text

from .conftest import attack, dead_letters, read_all, wait_for
from .test_signed_records import directive, forged_envelope, send, shell_rollback_record, violations
from .test_window_state import _Payload

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(240)]


def _forged_state(marker: Path) -> list[tuple[str, bytes]]:
    """Executor state claiming a plan mid-rollback whose rollback is ``/bin/sh -c 'touch marker'``."""
    return [("d-evil", shell_rollback_record(marker).model_dump_json().encode())]


@pytest.mark.timeout(240)
def test_attacks_on_a_running_up_change_nothing_and_a_real_fault_is_still_healed(
    settings: Settings, tmp_path: Path
) -> None:
    from metaheal.demo import demo_settings
    from metaheal.runtime import write_settings
    from metaheal.topics import ensure_topics

    s = demo_settings(settings, tmp_path, settings.topics.prefix)
    config = write_settings(s, tmp_path / "metaheal.yaml")
    ensure_topics(s)
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAHEAL_")}
    marker, pickled = tmp_path / "pwned-by-shell", tmp_path / "pwned-by-pickle"

    # --- written before `up` starts: state it reads when it starts --------------------------------------------
    for key, value in _forged_state(marker):
        send(s, "executor-state", value, key)  # unsigned
    changelog = f"{app_id(s)}-windows-changelog"
    partitions = s.topics.partitions.get("telemetry", 4)
    Admin(s.kafka).ensure([TopicSpec(changelog, partitions, config={"cleanup.policy": "compact"})])
    for p in range(partitions):  # wherever db's window state lives
        attack(s, changelog, [(b"db", pickle.dumps(_Payload(pickled)))], partition=p)

    up_log, sim_log = tmp_path / "up.log", tmp_path / "simulate.log"
    with open(up_log, "wb") as out:
        up = subprocess.Popen([*CLI, "up", "--config", str(config), "--workdir", str(tmp_path)], cwd=tmp_path,
                              env=env, stdout=out, stderr=out, start_new_session=True)  # fmt: skip
    sim = None
    forged_ids: set[str] = set()
    try:
        assert wait_for_text(up_log, "runtime starting", 60, up), up_log.read_text()[-3000:]
        with open(sim_log, "wb") as out:
            sim = subprocess.Popen(
                [*CLI, "simulate", "--config", str(config), "--scenario", "db_slow_query", "--at", "40", *SIM_ARGS],
                cwd=tmp_path, env=env, stdout=out, stderr=out, start_new_session=True,
            )  # fmt: skip
        assert wait_for_text(up_log, "service registered name=db", 60, up), up_log.read_text()[-3000:]
        # the executor reads directives and the meta loop follows its inputs live (records replayed at a
        # start are refused without a new dead letter): attack once both are there
        assert wait_for_text(up_log, "executor_assigned", 60, up), up_log.read_text()[-3000:]
        wait_for(lambda: StatusClient(s).control().last_cycle is not None, 60, "the meta loop's first cycle")

        # --- written while `up` runs -----------------------------------------------------------------------------
        attacked = time.time()
        ser = AvroSerializer(Directive)
        for i, headers in enumerate((False, True)):  # loose, "no verification needed": unsigned, then mis-signed
            d = directive(service="api_cluster", guardrail_level="loose", requires_verification=False,
                          focus_area="error_spike", directive_id=f"d-evil-{i}-{uuid.uuid4().hex[:6]}",
                          ml_advice=DirectiveAdvice(root_causes=["memory_leak"],
                                                    recommended_playbooks=["restart_service"]))  # fmt: skip
            forged_ids.add(d.directive_id)
            value = ser(d)
            hdrs = forged_envelope("directive", "meta_loop", value, d.service, d.directive_id) if headers else None
            send(s, "directives", value, d.service, hdrs)
        lease = json.dumps({"holder": "mallory", "epoch": 10**15, "expires_at": time.time() + 1e9, "ts": time.time()})
        send(s, "control", lease.encode(), LEADER_KEY)
        far = SignedOutcome(
            outcome_id="o-evil", plan_id="p-evil", directive_id="d-evil", cycle_id="c", service="db",
            playbook="failover_dependency", result="failed", duration_seconds=1.0, trust_decision="auto_approved",
            actor="executor", actor_signature="00", ts=time.time() + 10 * 365 * 86400,
        )  # fmt: skip
        send(s, "outcomes", AvroSerializer(SignedOutcome)(far), "db")
        evil = {"name": "vault", "admin_url": "http://169.254.169.254/latest", "registered_by": "x", "ts": time.time()}
        send(s, "services", json.dumps(evil).encode(), "vault")

        wanted = {
            "untrusted executor_state: unsigned",
            "untrusted directive: unsigned",
            "untrusted directive: unknown_key",
            "untrusted control record: unsigned",
            "untrusted outcome: unsigned",
            "untrusted service registration: unsigned",
            "state_undecodable",
        }
        wait_for(lambda: wanted <= {x.reason for x in dead_letters(s)}, 60, f"dead letters {sorted(wanted)}")
        refused = {(v["record_type"], v["reason"]) for v in violations(s) if "record_type" in v}
        assert {("executor_state", "unsigned"), ("directive", "unsigned"), ("directive", "unknown_key")} <= refused

        # --- the legitimate path in the same `up`: the meta loop's directive heals db ----------------------------
        assert wait_for_text(sim_log, "scenario injected", 60, sim), sim_log.read_text()[-3000:]
        injected = time.time()
        healed: list[SignedOutcome] = []
        deadline = time.monotonic() + 90
        while not healed and time.monotonic() < deadline and up.poll() is None:
            time.sleep(1.0)
            healed = [
                o
                for o in outcomes(s)
                if o.ts >= injected - 1
                and o.directive_id.startswith("dir_cycle_")  # the meta loop's own directive ids
                and o.service in ("db", "api_cluster")
                and o.result == "success"
                and o.verification_passed
            ]
        log = up_log.read_text(errors="replace")
        assert healed, "; ".join(f"{o.playbook}@{o.service}:{o.result}" for o in outcomes(s)) + "\n" + log[-4000:]

        # the meta loop kept cycling under its own lease: not mallory's
        view = StatusClient(s).control()
        assert view.leader is not None and view.leader.holder != "mallory" and view.leader.epoch < 10**15
        assert view.last_cycle is not None and float(view.last_cycle["ts"]) > attacked
        # nothing from a forged record: no command, no unpickled code, no outcome, no registration,
        assert not marker.exists() and not pickled.exists()
        done = [o for o in outcomes(s) if o.outcome_id != far.outcome_id]  # the forged one is on the topic
        assert not {o.directive_id for o in done} & (forged_ids | {"d-evil"})
        registry = read_registry(s).services
        assert "vault" not in registry and "service registered name=vault" not in log
        # every mutating call the fleet received belongs to a plan made for a directive the meta loop issued
        ledger = read_all(s, "ledger", LedgerEntry)
        issued = {e.cycle_id for e in ledger if e.action == "directive_issued" and e.actor == "meta_loop"}
        plans = {e.resource.removeprefix("plan/"): e.cycle_id for e in ledger if e.action == "plan_created"}
        assert plans and set(plans.values()) <= issued, (plans, issued)
        calls = {n: httpx.get(f"{r.admin_url}/idempotency", timeout=5).json()["calls"] for n, r in registry.items()}
        called = {key.split("/")[0] for per in calls.values() for key in per}
        assert called and called <= set(plans), (calls, plans)
    finally:
        if sim is not None:
            stop(sim)
        code = stop(up)
    assert code == 0 and "up stopped cleanly" in up_log.read_text(), up_log.read_text()[-3000:]
