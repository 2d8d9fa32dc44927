"""Approval decisions: signatures, registry, authorisation, replay and expiry."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from metaheal.agents.executor.approvals import (
    build_request,
    load_signing_key,
    rejection_reason,
    sign_decision,
)
from metaheal.config import OperatorSettings, Settings
from metaheal.events import AgenticPlan, RiskAssessment
from metaheal.ledger.keys import init_operator_key

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
    settings = Settings(operators=[OperatorSettings(name="alice", public_key=pub, services=["api"])])
    request = build_request(PLAN, ["impact medium exceeds tight limit low"], 60, now=time.time())
    return settings, load_signing_key(key_path), request


def decide(key, request, **kw):
    kw.setdefault("operator", "alice")
    kw.setdefault("decision", "approve")
    return sign_decision(key, plan_id=request.plan_id, request_id=request.request_id, **kw)


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
