"""kcat (system binary + the wheel's librdkafka) against the embedded broker."""

from __future__ import annotations

import json
import subprocess

import pytest

from metaheal.config import KafkaSettings
from metaheal.kafka import Admin, Consumer, Producer, TopicSpec
from metaheal.kcat import kcat_argv, kcat_env, kcat_lib_dir, run_kcat, shell_line

pytestmark = pytest.mark.broker


def test_lib_dir_links_the_bundled_librdkafka() -> None:
    folder = kcat_lib_dir()
    link = folder / "librdkafka.so.1"
    assert link.is_symlink() and link.resolve().is_file()
    assert "confluent_kafka.libs" in str(link.resolve())
    env = kcat_env({"LD_LIBRARY_PATH": "/opt/other"})
    assert env["LD_LIBRARY_PATH"] == f"{folder}:/opt/other"
    assert kcat_lib_dir() == folder  # idempotent


def test_kcat_uses_the_bundled_librdkafka() -> None:
    version = subprocess.run(["kcat", "-V"], env=kcat_env(), capture_output=True, text=True, check=True).stdout
    assert "librdkafka 2.0" not in version, version


def test_kcat_reads_records_with_headers_as_json(kafka_settings: KafkaSettings, request: pytest.FixtureRequest) -> None:
    topic = f"kcat.{request.node.name}"
    Admin(kafka_settings).ensure([TopicSpec(topic, 1, 1, {})])
    with Producer(kafka_settings) as p:
        for i in range(5):
            p.produce(topic, f'{{"n": {i}}}'.encode(), key=f"k{i}", headers={"actor": "meta_loop", "seq": str(i)})
        p.flush()
    out = subprocess.run(
        kcat_argv(kafka_settings.bootstrap or "", "-C", "-t", topic, "-e", "-J", "-q"),
        env=kcat_env(),
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout
    records = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    assert [r["key"] for r in records] == [f"k{i}" for i in range(5)]
    assert [json.loads(r["payload"])["n"] for r in records] == list(range(5))
    assert [r["offset"] for r in records] == list(range(5))
    assert all(r["topic"] == topic and r["partition"] == 0 for r in records)
    assert records[3]["headers"] == ["actor", "meta_loop", "seq", "3"]


def test_kcat_produces_records_metaheal_reads(kafka_settings: KafkaSettings, request: pytest.FixtureRequest) -> None:
    topic = f"kcat.{request.node.name}"
    Admin(kafka_settings).ensure([TopicSpec(topic, 1, 1, {})])
    run_kcat(kafka_settings.bootstrap or "", "-P", "-t", topic, "-K", ":", input=b"a:1\nb:2\n")
    with Consumer(kafka_settings) as c:
        got = [(m.key(), m.value()) for m in c.read_to_end(topic)]
    assert got == [(b"a", b"1"), (b"b", b"2")]


def test_shell_line_is_copy_pasteable(kafka_settings: KafkaSettings) -> None:
    line = shell_line(kafka_settings.bootstrap or "", "-L")
    out = subprocess.run(["sh", "-c", line], capture_output=True, text=True, timeout=30, check=True).stdout
    assert "1 brokers" in out
