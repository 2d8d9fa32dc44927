"""Approval decisions: signatures, registry, authorisation, plan binding, replay and expiry."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from metaheal.agents.executor.approvals import (
    build_request,
    load_registry,
    load_signing_key,
    plan_hash,
    rejection_reason,
    sign_decision,
    sign_for,
)
from metaheal.config import OperatorSettings, Settings
from metaheal.events import AgenticPlan, PlanStep, RiskAssessment
from metaheal.ledger.keys import KeyRegistry, init_operator_key, revoke_key, rotate_key

PLAN = AgenticPlan(
    plan_id="p1",
    directive_id="d1",
    cycle_id="c1",
    ts=0,
    service="api",
    selected_playbook="rollback_flag",
    steps=[],
    verifications=[],
    rollback_plan=[],
    trust_approval_required=True,
    estimated_duration=30,
    risk_assessment=RiskAssessment(impact="medium", blast_radius=1, risk_score=0.5),
    confidence=0.9,
)


@pytest.fixture
def setup(tmp_path: Path):
    key_path, pub = init_operator_key(tmp_path, "alice")
    settings = Settings(operators=[OperatorSettings(name="alice", public_key=pub, services=["api"])], keys=tmp_path)
    request = build_request(PLAN, ["impact medium exceeds tight limit low"], 60, now=time.time())
    return settings, load_signing_key(key_path), request


def decide(key, request, **kw):
    kw.setdefault("operator", "alice")
    kw.setdefault("decision", "approve")
    return sign_for(key, request, **kw)


def test_valid_decision_counts(setup):
    settings, key, req = setup
    assert rejection_reason(decide(key, req), req, settings, seen=set(), received_at=time.time()) is None


def test_forged_unauthorised_replayed_expired(setup):
    settings, key, req = setup
    now = time.time()
    other = SigningKey.generate()
    assert rejection_reason(decide(other, req), req, settings, seen=set(), received_at=now).startswith("forged: key")
    tampered = decide(key, req).model_copy(update={"decision": "deny"})
    assert "signature does not verify" in rejection_reason(tampered, req, settings, seen=set(), received_at=now)
    assert "not in the operator registry" in rejection_reason(
        decide(key, req, operator="eve"), req, settings, seen=set(), received_at=now
    )
    wrong_plan = sign_decision(key, plan_id="p2", request_id=req.request_id, operator="alice", decision="approve")
    assert rejection_reason(wrong_plan, req, settings, seen=set(), received_at=now).startswith(
        "forged: decision answers"
    )
    settings.operators[0].services = ["db"]
    assert rejection_reason(decide(key, req), req, settings, seen=set(), received_at=now).startswith("unauthorised")
    settings.operators[0].services = ["*"]
    d = decide(key, req)
    assert rejection_reason(d, req, settings, seen={d.decision_id}, received_at=now).startswith("replayed")
    assert rejection_reason(d, req, settings, seen=set(), received_at=req.expires_at + 1).startswith("expired")


def test_request_summarises_the_plan(setup):
    _, _, req = setup
    assert req.plan_id == "p1" and req.expires_at - req.requested_at == 60
    assert "rollback_flag on api" in req.plan_summary and "impact medium" in req.reason


def test_key_file_errors_name_the_option(tmp_path: Path):
    with pytest.raises(ValueError, match="--key: key file not found"):
        load_signing_key(tmp_path / "none.key")
    (tmp_path / "bad.key").write_text("zz")
    with pytest.raises(ValueError, match="not a hex Ed25519"):
        load_signing_key(tmp_path / "bad.key")


# --- the decision binds the whole plan -----------------------------------------------------------


def test_plan_hash_covers_what_the_plan_does():
    step = PlanStep(action="http.post", params_json='{"url": "http://127.0.0.1:9/flags/rollback"}')
    base = PLAN.model_copy(update={"steps": [step]})
    assert plan_hash(base) == plan_hash(base.model_copy(update={"ts": 99.0, "trust_approval_required": False}))
    other_params = step.model_copy(update={"params_json": '{"url": "http://127.0.0.1:9/restart"}'})
    changed = [
        base.model_copy(update={"selected_playbook": "restart_service"}),
        base.model_copy(update={"steps": [other_params]}),
        base.model_copy(update={"service": "db"}),
        base.model_copy(update={"risk_assessment": RiskAssessment(impact="high", blast_radius=3, risk_score=0.9)}),
        base.model_copy(update={"rollback_plan": [step]}),
    ]
    assert len({plan_hash(base), *map(plan_hash, changed)}) == 1 + len(changed)


def test_decision_for_another_plan_hash_or_nonce_is_refused(setup):
    settings, key, req = setup
    now = time.time()
    replanned = PLAN.model_copy(update={"selected_playbook": "restart_service"})
    other_req = build_request(replanned, ["x"], 60, now=now)  # same plan_id, another plan
    signed_for_other = sign_for(key, other_req, operator="alice", decision="approve")
    why = rejection_reason(signed_for_other, req, settings, seen=set(), received_at=now)
    assert why.startswith("forged: decision signs nonce"), why
    same_nonce = sign_decision(
        key, plan_id="p1", request_id=req.request_id, operator="alice", decision="approve",
        plan_hash=other_req.plan_hash, nonce=req.nonce,
    )  # fmt: skip
    assert rejection_reason(same_nonce, req, settings, seen=set(), received_at=now).startswith("plan_mismatch")
    ok = decide(key, req)
    assert rejection_reason(ok, req, settings, seen=set(), received_at=now, current_hash=req.plan_hash) is None
    why = rejection_reason(ok, req, settings, seen=set(), received_at=now, current_hash=plan_hash(replanned))
    assert why.startswith("plan_mismatch: plan p1 changed since it was requested"), why


def test_decided_before_the_request_is_refused(setup):
    settings, key, req = setup
    d = decide(key, req, decided_at=req.requested_at - 1)
    assert rejection_reason(d, req, settings, seen=set(), received_at=time.time()).startswith("backdated")


def test_revoked_and_rotated_keys_in_the_registry(setup):
    settings, key, req = setup
    folder = settings.keys
    d = decide(key, req)
    assert (
        rejection_reason(d, req, settings, seen=set(), received_at=time.time(), registry=KeyRegistry.load(folder))
        is None
    )
    new = rotate_key(folder, "operator:alice")  # the old key is closed now; the new one is alice's too
    new_key = load_signing_key(folder / f"{new.key_id}.key")
    reg = KeyRegistry.load(folder)
    fresh = decide(new_key, req)
    assert rejection_reason(fresh, req, settings, seen=set(), received_at=time.time(), registry=reg) is None
    late_old = decide(key, req)  # signed with the closed key after its valid_until
    why = rejection_reason(late_old, req, settings, seen=set(), received_at=time.time(), registry=reg)
    assert why.startswith("key_expired"), why
    revoke_key(folder, new.key_id)
    why = rejection_reason(fresh, req, settings, seen=set(), received_at=time.time(), registry=KeyRegistry.load(folder))
    assert why.startswith("revoked: key"), why


def test_malformed_operator_key_is_a_config_error_naming_the_field():
    with pytest.raises(ValueError, match=r"operators\.0\.public_key[\s\S]*64 hex digits"):
        Settings(operators=[{"name": "alice", "public_key": "not-hex"}])
    with pytest.raises(ValueError, match=r"operators\.0\.public_key[\s\S]*32-byte"):
        Settings(operators=[{"name": "alice", "public_key": "ab" * 16}])


def test_an_unreadable_key_registry_is_seen_as_such(setup):
    settings, _, _ = setup
    assert load_registry(settings) is not None
    (settings.keys / "registry.json").write_text("{not json")
    assert load_registry(settings) is None  # the executor and the console then refuse every decision
