"""Process wiring for ``metaheal up``: which components run, and clean shutdown.

Every component is an asyncio service with ``run(stop)``; this module starts the ones
a role asks for, sets ``stop`` on SIGINT/SIGTERM and waits for all of them, so Ctrl-C
leaves no orphan processes behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from metaheal.config import Settings
from metaheal.errors import ComponentFailed, RoleUnavailable
from metaheal.ledger import ImmutableLog
from metaheal.ledger.keys import init_system_keys
from metaheal.procs import PARENT_ENV, ProcessTable, preexec_for_child
from metaheal.registry import RegistryFollower, merged_services, read_registry, to_service

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """Structured-ish lines on stderr (``event key=value ...``), once per process."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("aiokafka", "faust", "mode", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)`` in a fresh event loop; SIGINT/SIGTERM set ``stop``."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, _on_signal, stop, sig)
        await main(stop)

    asyncio.run(runner())


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    if stop.is_set():
        logger.warning("signal repeated signal=%s (already stopping)", sig.name)
    else:
        logger.info("signal received signal=%s stopping=true", sig.name)
    stop.set()


# --- components and roles ---------------------------------------------------------------------

#: every role ``metaheal up --role`` accepts; ``all`` means :data:`ALL_ROLES` (plus the broker
#: when no bootstrap is given). The simulator is never part of ``all``: it is not production.
ROLES = ("all", "broker", "streams", "advisors", "meta", "executor", "simulator")
ALL_ROLES = ("streams", "advisors", "meta", "executor")


class Service(Protocol):
    async def run(self, stop: asyncio.Event) -> None: ...


@dataclass
class Component:
    role: str
    service: Service


class SubprocessService:
    """A component in its own process (the faust streams worker): SIGTERM on stop, SIGKILL if it lingers.

    The child dies with this process however it ends (docs/processes.md): the kernel's
    parent-death signal, the child's own parent watch (``METAHEAL_PARENT_PID``), and a
    PID file in ``table`` that the next ``up`` on the same workdir uses to stop a leftover.
    """

    def __init__(
        self,
        role: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        grace: float = 8.0,
        log_path: Path | None = None,
        table: ProcessTable | None = None,
    ) -> None:
        self.role = role
        self.argv = argv
        self.env = env
        self.grace = grace
        self.log_path = log_path
        self.table = table
        self.returncode: int | None = None

    async def run(self, stop: asyncio.Event) -> None:
        env = {**(self.env if self.env is not None else os.environ), PARENT_ENV: str(os.getpid())}
        # the child gets its own copy of the log's descriptor, so ours is closed once it started
        with open(self.log_path, "ab") if self.log_path is not None else contextlib.nullcontext() as out:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                env=env,
                start_new_session=True,
                stdout=out,
                stderr=out,
                preexec_fn=preexec_for_child(),
            )
        if self.table is not None:
            self.table.record(self.role, proc.pid, self.argv, group=True)
        logger.info("component subprocess started role=%s pid=%d", self.role, proc.pid)
        waiter = asyncio.create_task(proc.wait())
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(asyncio.shield(waiter), self.grace)
                except TimeoutError:
                    logger.warning("component subprocess did not stop role=%s pid=%d action=kill", self.role, proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    await waiter
            self.returncode = proc.returncode
            if self.table is not None:
                self.table.forget(self.role, proc.pid)
        logger.info("component subprocess exited role=%s code=%s", self.role, proc.returncode)
        if not stop.is_set():
            raise ComponentFailed(f"{self.role}: process exited with code {proc.returncode}")


def settings_env(settings: Settings, config_path: Path) -> dict[str, str]:
    """Environment for a child process: the full settings written to ``config_path``."""
    write_settings(settings, config_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAHEAL_") or k == "METAHEAL_LOG_FORMAT"}
    env["METAHEAL_CONFIG"] = str(config_path)
    return env


def write_settings(settings: Settings, path: Path) -> Path:
    """Settings as YAML that ``load_settings`` reads back to the same values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = settings.model_dump(mode="json", exclude_none=True)
    # owner-only: kafka.client may hold SASL passwords and key paths
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(yaml.safe_dump(doc, sort_keys=False))
    return path


def build_component(
    role: str,
    settings: Settings,
    *,
    workdir: Path | None = None,
    log_dir: Path | None = None,
    ledger: Any = None,
    table: ProcessTable | None = None,
) -> Component:
    """The component for ``role``.

    ``ledger`` is the one ``ImmutableLog`` every appending component of this process
    shares: the ledger allows a single writer, and two logs in one process would fork it.
    """
    # Each role's service is imported here, when its role runs: a one-role process should not pay
    # for the others (advisors: river and scipy, ~1 s; executor: ~0.1 s; simulator: aiohttp, ~0.2 s).
    try:
        if role == "advisors":
            from metaheal.agents.advisors.service import AdvisorService

            return Component(role, AdvisorService(settings, log=ledger))
        if role == "meta":
            from metaheal.agents.meta.loop import MetaLoop

            return Component(role, MetaLoop(settings, ledger=ledger))
        if role == "executor":
            from metaheal.agents.executor.service import Executor

            return Component(role, Executor(settings, log=ledger))
        if role == "streams":
            log_path = log_dir / "streams-worker.log" if log_dir is not None else None
            return Component(role, streams_subprocess(settings, workdir or Path.cwd(), log_path, table=table))
    except Exception as exc:  # a component that exists but cannot start: say which and why
        raise ComponentFailed(f"{role}: cannot start: {exc}") from exc
    raise RoleUnavailable(f"{role}: no such component role; known: {', '.join(ROLES)}")


def streams_subprocess(
    settings: Settings, workdir: Path, log_path: Path | None = None, *, table: ProcessTable | None = None
) -> SubprocessService:
    """The faust streams worker in its own process (faust owns its event loop and signals)."""
    config = workdir / "streams-settings.yaml"
    env = settings_env(settings, config)
    argv = [sys.executable, "-m", "metaheal.streams.worker", "--config", str(config)]
    return SubprocessService("streams", argv, env=env, log_path=log_path, table=table)


async def run_components(components: list[Component], stop: asyncio.Event, *, grace: float = 10.0) -> None:
    """Run every component until ``stop``; one stopping by itself stops all and raises.

    Components get ``grace`` seconds after ``stop`` to return (they should take < 2 s) before
    they are cancelled, so shutdown always completes.
    """
    tasks: dict[asyncio.Task[Any], Component] = {
        asyncio.create_task(c.service.run(stop), name=c.role): c for c in components
    }
    stopper = asyncio.create_task(stop.wait())
    early: list[str] = []
    try:
        pending = set(tasks)
        while pending and not stop.is_set():
            done, pending = await asyncio.wait(pending | {stopper}, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(stopper)
            for t in done - {stopper}:
                if not stop.is_set():
                    early.append(tasks[t].role)
                    logger.error(
                        "component stopped unexpectedly role=%s error=%r",
                        tasks[t].role,
                        t.exception() or "returned before stop",
                    )
                    stop.set()
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for t in late:
                logger.warning("component slow to stop role=%s action=cancel", tasks[t].role)
                t.cancel()
            if late:
                await asyncio.wait(late, timeout=2.0)
    finally:
        stopper.cancel()
    failures = []
    for t, c in tasks.items():
        if t.done() and not t.cancelled() and t.exception() is not None:
            failures.append(f"{c.role}: {t.exception()!r}")
        elif c.role in early:
            failures.append(f"{c.role}: returned before stop")
    for t, c in tasks.items():
        if not t.done() or t.cancelled():
            continue
        if t.exception() is not None:
            logger.error("component failed role=%s error=%r", c.role, t.exception())
    if failures:
        raise ComponentFailed("; ".join(failures))


def expand_roles(roles: list[str]) -> list[str]:
    """``all`` -> the production components; order kept, duplicates dropped.

    >>> expand_roles(["all"])
    ['streams', 'advisors', 'meta', 'executor']
    >>> expand_roles(["meta", "simulator", "meta"])
    ['meta', 'simulator']
    >>> expand_roles(["metta"])
    Traceback (most recent call last):
    ...
    ValueError: --role: unknown 'metta'; known: all, broker, streams, advisors, meta, executor, simulator
    """
    out: list[str] = []
    for r in roles:
        for part in r.split(","):
            part = part.strip()
            if part not in ROLES:
                raise ValueError(f"--role: unknown {part!r}; known: {', '.join(ROLES)}")
            for x in ALL_ROLES if part == "all" else (part,):
                if x not in out:
                    out.append(x)
    return out


#: roles that read ``settings.services`` (dependency graph, admin URLs) and so follow the registry
USES_SERVICES = frozenset({"advisors", "meta", "executor"})


class Runtime:
    """What ``metaheal up`` runs in one process: optional simulator, then the components.

    The simulator (when asked for) starts first so its admin URLs can be merged into
    ``settings.services`` before the executor reads them. Roles asked for explicitly
    must be available; under ``all`` a missing component is logged and skipped.

    Services a fleet registers on ``<prefix>services`` after start-up (``metaheal
    simulate`` in another terminal) are merged into the same ``settings`` object the
    components hold, on the event loop, so the executor's per-directive
    ``settings.service(name)`` and the dependency graphs see them (metaheal.registry).
    """

    def __init__(
        self,
        settings: Settings,
        roles: list[str],
        *,
        workdir: Path,
        explicit: bool = True,
        simulator_options: dict[str, Any] | None = None,
        log_dir: Path | None = None,
        table: ProcessTable | None = None,
    ) -> None:
        self.log_dir = log_dir
        #: PID files of the child processes (``<workdir>/run``), read by the next ``up`` on this workdir
        self.table = table if table is not None else ProcessTable(workdir)
        self.ledger: Any = None
        self.settings = settings
        self.roles = [r for r in roles if r != "broker"]
        self.workdir = workdir
        self.explicit = explicit
        self.simulator_options = simulator_options or {}
        self.simulator: Any = None
        self.components: list[Component] = []
        self.skipped: dict[str, str] = {}
        #: services from the configuration (they win) and from the registry (merged in while running)
        self.configured = list(settings.services)
        self.registered: dict[str, Any] = {}
        self.registry: Any = None

    def prepare_keys(self) -> None:
        """System signing keys must exist before any component signs (idempotent)."""
        if not {"advisors", "meta", "executor"} & set(self.roles):
            return
        init_system_keys(self.settings.keys)

    async def start(self) -> list[Component]:
        self.settings.playbooks = resolve_playbooks(self.settings.playbooks)
        if "simulator" in self.roles:
            from metaheal.simulator.runner import Simulator  # only with the simulator role (see build_component)

            self.simulator = Simulator(self.settings, **self.simulator_options)
            await self.simulator.start()
            for svc in self.simulator.services_config():
                self.registered[svc.name] = svc
            self._apply_services()
            self.components.append(Component("simulator", self.simulator))
        if USES_SERVICES & set(self.roles):
            await self.follow_registry()
        await asyncio.to_thread(self.prepare_keys)
        if self.ledger is None and {"advisors", "meta", "executor"} & set(self.roles):
            self.ledger = ImmutableLog(self.settings)
        for role in self.roles:
            if role == "simulator":
                continue
            try:
                self.components.append(
                    build_component(
                        role,
                        self.settings,
                        workdir=self.workdir,
                        log_dir=self.log_dir,
                        ledger=self.ledger,
                        table=self.table,
                    )
                )
            except RoleUnavailable as exc:
                if self.explicit:
                    raise
                self.skipped[role] = str(exc)
                logger.warning("role skipped role=%s reason=%s", role, exc)
        logger.info(
            "runtime starting roles=%s skipped=%s",
            ",".join(c.role for c in self.components),
            ",".join(self.skipped) or "-",
        )
        return self.components

    async def run(self, stop: asyncio.Event) -> None:
        if not self.components:
            await self.start()
        failed: list[str] = []
        watch = asyncio.create_task(self._watch_registry(stop, failed))
        try:
            await run_components(self.components, stop)
        finally:
            watch.cancel()
            self.close()
        logger.info("runtime stopped roles=%s", ",".join(c.role for c in self.components))
        if failed:
            raise ComponentFailed(f"registry: {failed[0]}")

    async def _watch_registry(self, stop: asyncio.Event, failed: list[str], interval: float = 1.0) -> None:
        """Fail closed: if the registry reader stops, every component stops (services would go stale)."""
        while not stop.is_set():
            if self.registry is not None and self.registry.failed:
                failed.append(f"reader stopped: {self.registry.last_error}")
                logger.error("registry reader failed: stopping every component error=%s", self.registry.last_error)
                stop.set()
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    def close(self) -> None:
        if self.registry is not None:
            self.registry.stop()
            self.registry = None
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None

    # --- the service registry ----------------------------------------------------------------

    async def follow_registry(self) -> None:
        """Read the registry to its end before any component is built, then follow it."""
        snap = await asyncio.to_thread(read_registry, self.settings)
        for name, reg in snap.services.items():
            self.registered[name] = to_service(reg)
        for offset, key, error in snap.rejected:
            logger.warning("service registration rejected key=%s offset=%d error=%s", key, offset, error)
        self._apply_services()
        if snap.services:
            logger.info("services registered count=%d names=%s", len(snap.services), ",".join(sorted(snap.services)))
        loop = asyncio.get_running_loop()

        def on_change(name: str, reg: Any) -> None:
            loop.call_soon_threadsafe(self.registry_changed, name, reg)

        self.registry = RegistryFollower(
            self.settings,
            on_change,
            start_offset=snap.next_offset,
            dead_letter="executor" in self.roles,
            signed_at=snap.signed_at,
        )
        await asyncio.to_thread(self.registry.start)

    def registry_changed(self, name: str, reg: Any) -> None:
        """One registration (or ``None``: deregistration) read from the registry; runs on the event loop."""
        configured = next((s for s in self.configured if s.name == name), None)
        if reg is None:
            if self.registered.pop(name, None) is not None:
                logger.info("service deregistered name=%s", name)
        else:
            self.registered[name] = to_service(reg)
            note = " (configured entry wins)" if configured is not None else ""
            logger.info(
                "service registered name=%s admin_url=%s dependencies=%s by=%s%s",
                name,
                reg.admin_url,
                ",".join(reg.dependencies) or "-",
                reg.registered_by,
                note,
            )
        self._apply_services()

    def _apply_services(self) -> None:
        self.settings.services = merged_services(self.configured, self.registered.values())


def resolve_playbooks(folder: Path) -> Path:
    """A relative playbooks folder missing here falls back to the default set shipped with metaheal."""
    if folder.is_dir() or folder.is_absolute():
        return folder
    shipped = Path(__file__).resolve().parent.parent / folder
    if not shipped.is_dir() and folder == Path("playbooks"):
        shipped = shipped_playbooks()  # installed from a wheel: the package data
    if shipped.is_dir():
        logger.info("playbooks folder=%s not found here; using shipped=%s", folder, shipped)
        return shipped
    return folder


def shipped_playbooks() -> Path:
    """The default playbooks installed with metaheal (package data of ``metaheal.playbooks``)."""
    return Path(str(importlib.resources.files("metaheal.playbooks")))
