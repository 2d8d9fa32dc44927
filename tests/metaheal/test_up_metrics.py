"""`metaheal up --metrics-port`: /metrics scraped over HTTP and parsed with prometheus_client's parser.

The counters must move while `up` heals a fault the simulator injects, including the
telemetry counted in the streams worker process (multiprocess metrics merged by `up`).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from metaheal.broker import free_port
from metaheal.config import Settings

from .test_up_simulate import CLI, SIM_ARGS, outcomes, stop, wait_for_text


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(
        v for (n, ls), v in samples.items() if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
    )


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.timeout(330)
def test_metrics_move_while_up_heals_a_fault(settings: Settings, tmp_path: Path) -> None:
    from metaheal.demo import demo_settings
    from metaheal.runtime import write_settings
    from metaheal.topics import ensure_topics

    s = demo_settings(settings, tmp_path, settings.topics.prefix)
    config = write_settings(s, tmp_path / "metaheal.yaml")
    ensure_topics(s)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAHEAL_")}
    up_log, sim_log = tmp_path / "up.log", tmp_path / "simulate.log"
    with open(up_log, "wb") as out:
        up = subprocess.Popen(
            [*CLI, "up", "--config", str(config), "--workdir", str(tmp_path), "--metrics-port", str(port)],
            cwd=tmp_path,
            env={**env, "METAHEAL_LOG_FORMAT": "json"},
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    sim = None
    try:
        assert wait_for_text(up_log, "runtime starting", 60, up), up_log.read_text()[-3000:]
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        before = scrape(port)
        assert total(before, "metaheal_outcomes_total") == 0
        with open(sim_log, "wb") as out:
            sim = subprocess.Popen(
                [*CLI, "simulate", "--config", str(config), "--scenario", "db_slow_query", "--at", "25", *SIM_ARGS],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        deadline = time.monotonic() + 220
        healed = False
        while not healed and time.monotonic() < deadline and up.poll() is None:
            time.sleep(2.0)
            healed = any(o.playbook == "failover_dependency" and o.result == "success" for o in outcomes(s))
        assert healed, up_log.read_text()[-4000:]
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        # the watcher counts what it reads: give it a moment past the outcomes
        published = Counter((o.playbook, o.result) for o in outcomes(s))
        deadline = time.monotonic() + 15
        after = scrape(port)
        while time.monotonic() < deadline and any(
            total(after, "metaheal_outcomes_total", playbook=p, result=r) < n for (p, r), n in published.items()
        ):
            time.sleep(1.0)
            after = scrape(port)
    finally:
        if sim is not None:
            stop(sim)
        code = stop(up)
    assert code == 0, up_log.read_text()[-3000:]
    # exactly the outcomes published on the topic (all after up started), by playbook and result
    for (playbook, result), n in published.items():
        assert total(after, "metaheal_outcomes_total", playbook=playbook, result=result) == n, (playbook, result)
    assert total(after, "metaheal_outcomes_total", playbook="failover_dependency", result="success") >= 1
    assert total(after, "metaheal_plans_total", playbook="failover_dependency") >= 1
    assert total(after, "metaheal_cycles_total") > total(before, "metaheal_cycles_total")
    assert total(after, "metaheal_directives_total") >= 1
    # counted in the streams worker process, merged into up's page
    assert total(after, "metaheal_telemetry_samples_total", format="avro") > total(
        before, "metaheal_telemetry_samples_total"
    )
    assert total(after, "metaheal_ledger_appends_total") > total(before, "metaheal_ledger_appends_total")
    assert total(after, "metaheal_ledger_append_seconds_count") == total(after, "metaheal_ledger_appends_total")
    assert ("metaheal_guardrail_level", ()) in after and after["metaheal_guardrail_level", ()] in (0, 1, 2)
    assert ("metaheal_pending_approvals", ()) in after
    assert total(after, "metaheal_streams_heartbeat_timestamp_seconds") > time.time() - 60
    assert any(n == "metaheal_consumer_lag" for n, _ in after)
    # --log-format json (via METAHEAL_LOG_FORMAT): every log line of up is a JSON object
    lines = [ln for ln in up_log.read_text().splitlines() if ln.startswith("{")]
    docs = [json.loads(ln) for ln in lines]
    assert any(d.get("cycle_id") for d in docs), "no cycle_id field in the JSON logs"
    assert not any(ln.startswith("%") for ln in up_log.read_text().splitlines()), "raw librdkafka lines"
