"""Metrics merged across processes, the Grafana dashboard's queries, librdkafka's log lines."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from metaheal.broker import free_port
from metaheal.config import KafkaSettings
from metaheal.kafka import Producer
from metaheal.observability import OUTCOMES, exposition, prepare_multiproc_dir

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "metaheal-dashboard.json"


def samples(text: bytes) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text.decode())
        for s in fam.samples
    }


def test_a_child_process_metrics_are_merged_into_the_parent_page(tmp_path: Path) -> None:
    folder = prepare_multiproc_dir(tmp_path / "metrics")
    OUTCOMES.labels("restart_service", "success").inc()
    child = (
        "from metaheal.observability import TELEMETRY_SAMPLES, DEADLETTERS, OUTCOMES\n"
        "TELEMETRY_SAMPLES.labels('otlp_proto').inc(7)\n"
        "DEADLETTERS.labels('invalid').inc()\n"
        "OUTCOMES.labels('restart_service', 'success').inc(2)\n"
    )
    env = {"PROMETHEUS_MULTIPROC_DIR": str(folder), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", child], env=env, check=True)
    page = samples(exposition(folder))
    assert page["metaheal_telemetry_samples_total", (("format", "otlp_proto"),)] == 7
    assert page["metaheal_deadletters_total", (("reason", "invalid"),)] == 1
    ours = OUTCOMES.labels("restart_service", "success")._value.get()
    # the same series in both processes is summed
    assert page["metaheal_outcomes_total", (("playbook", "restart_service"), ("result", "success"))] == ours + 2


def test_the_dashboard_only_queries_metrics_metaheal_exports() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exported = {fam.name for fam in text_string_to_metric_families(exposition().decode())}
    exported |= {f"{n}_total" for n in exported} | {f"{n}_bucket" for n in exported}
    queried = {
        name
        for panel in dash["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bmetaheal_[a-z_]+", target["expr"])
    }
    assert queried and queried <= exported, queried - exported


def test_librdkafka_lines_go_through_python_logging_once(capfd, caplog) -> None:
    """An unreachable broker: warnings through logging, not hundreds of raw %3|...|FAIL| lines."""
    caplog.set_level(logging.DEBUG, logger="metaheal.kafka.librdkafka")
    port = free_port()  # nothing listens here
    p = Producer(KafkaSettings(bootstrap=f"127.0.0.1:{port}", client={"reconnect.backoff.ms": 10}))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        p._producer.poll(0.1)  # serves librdkafka's log queue
    err = capfd.readouterr().err
    assert "|FAIL|" not in err, err[:500]
    fails = [r for r in caplog.records if r.name == "metaheal.kafka.librdkafka" and "FAIL" in r.getMessage()]
    assert fails, [r.getMessage() for r in caplog.records]
    assert all(r.levelno == logging.WARNING for r in fails)
    assert len(fails) <= 3, [r.getMessage() for r in fails]  # repeats within a minute are dropped
