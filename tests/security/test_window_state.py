"""No code from data: window state on the changelog is refused unless it is this version's Avro.

Before, the worker unpickled every value of its windows changelog: one record there ran code in
the worker. The attack here writes a pickle whose loading would create a file, plus a forged
progress marker, then lets the worker read that changelog while it processes telemetry.
"""

from __future__ import annotations

import asyncio
import json
import math
import pickle
from array import array
from pathlib import Path

import pytest

from metaheal.config import Settings
from metaheal.kafka import Admin, TopicSpec
from metaheal.streams.app import app_id
from metaheal.streams.windows import (
    STATE_VERSION,
    Point,
    SeriesWindow,
    ServiceState,
    chunk_key,
    load_state,
    state_writes,
)
from metaheal.streams.worker import run_worker

from .conftest import T0, attack, await_for, dead_letters, health


class _Payload:
    """Unpickling this creates ``path``: the proof that a loader executed data."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_a_pickled_value_is_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    store = {b"api": pickle.dumps(_Payload(marker), protocol=5)}
    refused: list[tuple[bytes, str]] = []
    st = load_state("api", store.get, lambda key, _value, error: refused.append((key, error)))
    assert not marker.exists()
    assert st.open == {} and st.applied == {}
    assert refused == [(b"api", "not Avro single-object encoding: marker 8005 != c301")]


def test_state_round_trips_and_forged_values_are_refused() -> None:
    st = ServiceState("api")
    for i in range(30):
        st.add(Point("api/latency_ms", "latency_ms", "latency", None, 100.0 + i, T0 + i / 10), window=1.0)
    st.mark_applied(2, 41)
    store: dict[bytes, bytes] = {}
    for key, value in state_writes(st):
        assert value is not None
        store[key] = value
    back = load_state("api", store.get)
    assert back.applied == {2: 41} and back.max_ts == st.max_ts
    assert {s: list(b["api/latency_ms"].values) for s, b in back.open.items()} == {
        s: list(b["api/latency_ms"].values) for s, b in st.open.items()
    }
    assert back.known == {"api/latency_ms"}

    # a chunk of non-finite values, a state stored under another service's key, a truncated record
    start = next(iter(st.open))
    forged_chunk = dict(store)
    bad = array("d", [math.inf])
    from metaheal.streams.windows import _CHUNK

    forged_chunk[chunk_key("api", start, 0)] = _CHUNK.encode(
        {"version": STATE_VERSION, "series": {"api/latency_ms": bad.tobytes()}}
    )
    other = {b"db": store[b"api"]}
    truncated = {**store, b"api": store[b"api"][:-3]}
    for forged, service, needle in [
        (forged_chunk, "api", "not finite"),
        (other, "db", "stored under key 'db'"),
        (truncated, "api", "truncated or corrupt"),
    ]:
        errors: list[str] = []
        got = load_state(service, forged.get, lambda _k, _v, e: errors.append(e))  # noqa: B023
        assert got.open == {} and len(errors) == 1 and needle in errors[0], errors


def test_window_mean_cannot_overflow() -> None:
    """Two samples near the float limit (what the intake now refuses) still give a finite mean."""
    st = ServiceState("api")
    sw = SeriesWindow("latency_ms", "latency", None)
    sw.values.extend([1.7e308, 1.7e308])
    st.open[0.0] = {"api/latency_ms": sw}
    hw = st.close_all(window=1.0)[0][0]
    assert hw.signals[0].mean == pytest.approx(1.7e308)


async def test_worker_refuses_a_pickle_on_its_windows_changelog(stream_topics: Settings, tmp_path: Path) -> None:
    s = stream_topics
    marker = tmp_path / "pwned"
    changelog = f"{app_id(s)}-windows-changelog"
    partitions = s.topics.partitions.get("telemetry", 4)
    Admin(s.kafka).ensure([TopicSpec(changelog, partitions, config={"cleanup.policy": "compact"})])
    poison = pickle.dumps(_Payload(marker))
    for p in range(partitions):  # wherever the service's state lives
        attack(s, changelog, [(b"api", poison), (b"\x00progress/%d" % p, b"not an offset")], partition=p)
    telemetry = [
        (b"api", json.dumps({"service": "api", "metric": "latency_ms", "value": 100.0 + i, "ts": T0 + i / 4}).encode())
        for i in range(16)
    ]
    attack(s, s.topics.name("telemetry"), telemetry)

    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(s, stop))

    def done() -> bool:
        return {h.window_start for h in health(s) if h.service == "api"} >= {T0, T0 + 1, T0 + 2}

    try:
        await await_for(done, 90, "api's health windows")
    finally:
        stop.set()
        stats = await asyncio.wait_for(task, 30)

    assert not marker.exists(), "the worker executed a pickle from its changelog"
    refused = [d for d in dead_letters(s) if d.reason == "state_undecodable"]
    assert len(refused) == 1 and refused[0].source_topic == changelog and refused[0].key == b"api"
    assert refused[0].value == poison and "not Avro single-object encoding" in refused[0].error
    assert stats.state_refused == 1
    # rebuilt from empty: every sample counted once in its window
    windows = {h.window_start: h for h in health(s) if h.service == "api"}
    assert [windows[T0 + w].sample_count for w in range(3)] == [4, 4, 4]
