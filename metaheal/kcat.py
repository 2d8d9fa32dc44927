"""Run ``kcat`` against any metaheal broker, including the embedded tansu.

Why this module exists: Debian's kcat links librdkafka 2.0.2, which fails against
tansu, while the confluent-kafka wheel bundles a recent librdkafka. Pointing
``LD_LIBRARY_PATH`` at a folder whose ``librdkafka.so.1`` is that bundled library
makes the system kcat use it, with no compiler and no second download.

>>> kcat_argv("127.0.0.1:9092", "-C", "-t", "metaheal.ledger", "-e", "-J")[1:]
['-b', '127.0.0.1:9092', '-C', '-t', 'metaheal.ledger', '-e', '-J']
>>> shell_line("127.0.0.1:9092", "-L", env={"LD_LIBRARY_PATH": "/x y"})
"LD_LIBRARY_PATH='/x y' kcat -b 127.0.0.1:9092 -L"
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from metaheal.errors import KcatUnavailable
from metaheal.s3local import tools_dir

logger = logging.getLogger(__name__)

SONAME = "librdkafka.so.1"


def bundled_librdkafka() -> Path:
    """The librdkafka shipped inside the confluent-kafka wheel."""
    spec = importlib.util.find_spec("confluent_kafka")
    if spec is None or not spec.submodule_search_locations:
        raise KcatUnavailable("confluent-kafka is not installed")
    libs = Path(next(iter(spec.submodule_search_locations))).parent / "confluent_kafka.libs"
    found = sorted(libs.glob("librdkafka-*.so*"))
    if not found:
        raise KcatUnavailable(f"no bundled librdkafka in {libs}")
    return found[0]


def _lib_dir_candidates() -> list[Path]:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [tools_dir() / "kcat-lib", cache / "metaheal" / "kcat-lib"]


def _link(folder: Path, target: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / SONAME
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    tmp = folder / f".{SONAME}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)  # atomic, so concurrent callers never see a missing link


def kcat_lib_dir() -> Path:
    """A folder holding ``librdkafka.so.1`` -> the wheel's librdkafka (made on first use)."""
    target = bundled_librdkafka()
    errors = []
    for folder in _lib_dir_candidates():
        try:
            _link(folder, target)
            return folder
        except OSError as exc:
            errors.append(f"{folder}: {exc}")
    raise KcatUnavailable("cannot create the kcat library folder: " + "; ".join(errors))


def kcat_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with ``LD_LIBRARY_PATH`` set for kcat."""
    env = dict(os.environ if base is None else base)
    folder = str(kcat_lib_dir())
    rest = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = f"{folder}:{rest}" if rest else folder
    return env


def kcat_binary() -> str:
    path = shutil.which("kcat")
    if path is None:
        raise KcatUnavailable("kcat is not installed: run `make tools` (apt-get install -y kcat)")
    return path


def client_args(client: Mapping[str, object]) -> list[str]:
    """``kafka.client`` (librdkafka settings, SASL/TLS included) as kcat ``-X key=value`` arguments.

    >>> client_args({"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "enable.idempotence": True})
    ['-X', 'security.protocol=SASL_SSL', '-X', 'sasl.mechanism=PLAIN', '-X', 'enable.idempotence=true']
    """
    out: list[str] = []
    for key, value in client.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        out += ["-X", f"{key}={text}"]
    return out


def kcat_argv(bootstrap: str, *args: str) -> list[str]:
    """The command line for kcat against ``bootstrap``; run it with :func:`kcat_env`."""
    return [shutil.which("kcat") or "kcat", "-b", bootstrap, *args]


def shell_line(bootstrap: str, *args: str, env: Mapping[str, str] | None = None) -> str:
    """A copy-pasteable shell one-liner (what the docs and ``ledger`` commands print)."""
    lib = (env if env is not None else kcat_env())["LD_LIBRARY_PATH"]
    return shlex.join(["kcat", "-b", bootstrap, *args]).replace("kcat", f"LD_LIBRARY_PATH={shlex.quote(lib)} kcat", 1)


def run_kcat(bootstrap: str, *args: str, timeout: float = 30.0, input: bytes | None = None) -> bytes:
    """Run kcat and return its stdout; a failure raises with kcat's own message."""
    argv = [kcat_binary(), "-b", bootstrap, *args]
    logger.info("kcat run argv=%s", shlex.join(argv))
    done = subprocess.run(argv, env=kcat_env(), input=input, capture_output=True, timeout=timeout)
    if done.returncode != 0:
        raise KcatUnavailable(f"kcat exited {done.returncode}: {done.stderr.decode(errors='replace').strip()[-500:]}")
    return done.stdout
