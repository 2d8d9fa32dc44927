"""The admin API applies a keyed POST once: a re-send gets the first answer, and calls are counted per key."""

from __future__ import annotations

import httpx
import pytest

from metaheal.simulator.fleet import Fleet

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_same_key_same_answer_effect_applied_once(fleet: Fleet, admin: dict[str, httpx.AsyncClient]) -> None:
    api = admin["api_cluster"]
    before = fleet.state("api_cluster").instances
    key = {"Idempotency-Key": "plan-1/1"}
    first = await api.post("/scale", json={"delta": 2}, headers=key)
    again = await api.post("/scale", json={"delta": 2}, headers=key)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json() == {"instances": before + 2}
    assert again.headers.get("Idempotent-Replayed") == "true" and "Idempotent-Replayed" not in first.headers
    assert fleet.state("api_cluster").instances == before + 2  # applied once
    other = await api.post("/scale", json={"delta": 2}, headers={"Idempotency-Key": "plan-2/1"})
    assert other.json() == {"instances": before + 4}  # another key is another action
    unkeyed = await api.post("/scale", json={"delta": -1})
    assert unkeyed.json() == {"instances": before + 3}  # no key: applied every time, as before
    counts = (await api.get("/idempotency")).json()
    assert counts["calls"] == {"plan-1/1": 2, "plan-2/1": 1} and counts["applied"] == ["plan-1/1", "plan-2/1"]


async def test_a_key_reused_for_another_endpoint_is_refused(admin: dict[str, httpx.AsyncClient]) -> None:
    api = admin["api_cluster"]
    assert (await api.post("/cache/warm", headers={"Idempotency-Key": "k"})).status_code == 200
    reused = await api.post("/restart", headers={"Idempotency-Key": "k"})
    assert reused.status_code == 422 and "/cache/warm" in reused.json()["error"]


async def test_a_rejected_request_is_remembered_too(fleet: Fleet, admin: dict[str, httpx.AsyncClient]) -> None:
    api = admin["api_cluster"]
    bad = await api.post("/scale", json={"delta": "two"}, headers={"Idempotency-Key": "bad"})
    assert bad.status_code == 400 and "delta" in bad.json()["error"]
    # fixing the body does not make the same key act: a key names one request
    again = await api.post("/scale", json={"delta": 2}, headers={"Idempotency-Key": "bad"})
    assert again.status_code == 400 and fleet.state("api_cluster").instances == 8
