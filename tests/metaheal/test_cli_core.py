"""`metaheal topics ensure|check` (in process) and `metaheal broker` (as a subprocess)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from metaheal.broker import EmbeddedBroker, free_port
from metaheal.cli import core
from metaheal.config import KafkaSettings
from metaheal.kafka import Admin
from metaheal.s3local import install_s3rver
from metaheal.topics import TOPICS

pytestmark = pytest.mark.broker

app = typer.Typer()
app.add_typer(core.topics_app, name="topics")
METAHEAL = str(Path(sys.executable).parent / "metaheal")


def topics_cli(*args: str, prefix: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["topics", *args], env={"METAHEAL_TOPICS__PREFIX": prefix, **(env or {})})
    return result.exit_code, result.stdout, result.stderr


def test_topics_ensure_then_check_then_drift(broker: EmbeddedBroker) -> None:
    prefix = f"cli{uuid.uuid4().hex[:8]}."
    boot = ["--bootstrap", broker.bootstrap]
    code, out, _ = topics_cli("check", *boot, prefix=prefix)
    assert code == 1
    assert f"DRIFT {prefix}ledger: missing" in out.splitlines()

    code, out, _ = topics_cli("ensure", *boot, prefix=prefix)
    assert code == 0 and out.startswith(f"created {len(TOPICS)} topic(s): ")
    assert f"{prefix}ledger" in out
    code, out, _ = topics_cli("ensure", *boot, prefix=prefix)
    assert (code, out.strip()) == (0, "created 0 topic(s)")

    code, out, _ = topics_cli("check", *boot, prefix=prefix)
    assert (code, out.strip()) == (0, "all topics match the declaration")

    Admin(KafkaSettings(bootstrap=broker.bootstrap)).alter_config(f"{prefix}ledger", {"cleanup.policy": "delete"})
    code, out, _ = topics_cli("check", prefix=prefix, env={"METAHEAL_BOOTSTRAP": broker.bootstrap})
    assert code == 1
    assert out.splitlines() == [f"DRIFT {prefix}ledger: cleanup.policy=delete != declared compact"]


def test_topics_without_bootstrap_exit_2() -> None:
    code, _, err = topics_cli("ensure", prefix="x.")
    assert code == 2 and "no Kafka bootstrap" in err


# --- metaheal broker ------------------------------------------------------------------------------


def _processes_mentioning(*texts: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(t in cmd for t in texts):
            found.append(f"{proc.name}: {cmd}")
    return found


def _start(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([METAHEAL, "broker", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # printed once the broker answers metadata
    return proc, line


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_broker_command_in_memory(sig: signal.Signals) -> None:
    port = free_port()
    proc, bootstrap = _start("--port", str(port))
    try:
        assert bootstrap == f"127.0.0.1:{port}"
        Admin(KafkaSettings(bootstrap=bootstrap)).wait_ready(timeout=5)
        assert _processes_mentioning(f"tcp://127.0.0.1:{port}")
    finally:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "in memory" in err and "stopped" in err
    assert _processes_mentioning(f"tcp://127.0.0.1:{port}") == []


def test_broker_command_durable_leaves_no_process(tmp_path: Path) -> None:
    install_s3rver()
    port, data = free_port(), tmp_path / "data"
    proc, bootstrap = _start("--port", str(port), "--data-dir", str(data))
    try:
        assert bootstrap == f"127.0.0.1:{port}"
        Admin(KafkaSettings(bootstrap=bootstrap)).wait_ready(timeout=5)
        assert _processes_mentioning("s3rver", str(data))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"durable in {data}" in err
    assert _processes_mentioning(f"tcp://127.0.0.1:{port}") == []
    assert _processes_mentioning("s3rver", str(data)) == []


def test_broker_command_port_in_use_fails_clearly(broker: EmbeddedBroker) -> None:
    done = subprocess.run([METAHEAL, "broker", "--port", str(broker.port)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"error: cannot listen on 127.0.0.1:{broker.port}" in done.stderr
    assert done.stdout == ""


def test_broker_command_stopped_while_starting_leaves_no_process(tmp_path: Path) -> None:
    install_s3rver()
    port, data = free_port(), tmp_path / "data"
    proc = subprocess.Popen(
        [METAHEAL, "broker", "--port", str(port), "--data-dir", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Interrupt as soon as the S3 server exists, before the broker is ready.
        deadline = time.monotonic() + 30
        while not _processes_mentioning("s3rver", str(data)):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert _processes_mentioning("s3rver", str(data)) == []
    assert _processes_mentioning(f"tcp://127.0.0.1:{port}") == []
