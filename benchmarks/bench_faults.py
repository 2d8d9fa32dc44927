"""Per fault type: `metaheal up` + a separate `metaheal simulate --scenario NAME`, timed from the topics.

What an operator runs, in two processes that only share the broker: for each fault a
fresh topic prefix, `metaheal up --config cfg` (streams worker, advisors, meta loop,
executor; no services configured) and, once it runs, `metaheal simulate --config cfg
--scenario NAME --at WARMUP` (the fleet registers its admin URLs on `<prefix>services`;
that registry is the only link). The demo's own code reads the timeline from the topics
and the ledger and judges the flow (metaheal.demo.Timeline / Driver / summarize): healed
= a signed, verified outcome after which every service's /health is OK. Approvals are
answered the way the demo does it: this script plays the operator `demo-operator`
(approve when the plan's service is degraded by its /health, deny otherwise), signing
with the demo operator key, and says so.

    python benchmarks/bench_faults.py [--faults db_slow_query,traffic_surge,...] [--warmup 30]
                                      [--timeout 120] [--seed 0] [--bootstrap HOST:PORT] [--workdir DIR] [-v]
                                      [--deny PLAYBOOK ...]   # e.g. --faults bad_deployment --deny rollback_flag
                                      [--cycle-seconds 5 --window-seconds 10 --lateness-seconds 5]

Times are seconds from the injection (the simulator's own "scenario injected" log line) to:
  anomaly   - the first crossed AnomalyScore on a service the fault affects (its target or
              any service calling it or called by it, transitively, by the registered
              dependencies: demo.affected_services);
  focus     - the first non-routine CycleFocus that targets such a service;
  detection - the earlier of the two;
  directive - the first Directive of a cycle focused after the injection;
  fixed     - the verified outcome after which the whole fleet is healthy.
Every plan and every non-successful outcome after the injection is listed, so a wrong
playbook that ran (and was rolled back) or was refused shows up; `--deny` takes the right
playbook away to show what the wrong ones do. Shared 2-core machine:
numbers are noisy; run more than once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from metaheal.broker import EmbeddedBroker, free_port
from metaheal.config import KafkaSettings, Settings
from metaheal.demo import (
    DemoReport,
    Driver,
    FlowResult,
    Timeline,
    add_demo_operator,
    affected_services,
    demo_settings,
    fault_flow,
    summarize,
)
from metaheal.events import AgenticPlan, AnomalyScore, CycleFocus, SignedOutcome
from metaheal.ledger.keys import init_system_keys
from metaheal.registry import read_registry, to_service
from metaheal.runtime import resolve_playbooks, write_settings
from metaheal.simulator.faults import scenario_faults
from metaheal.topics import ensure_topics

ROOT = Path(__file__).resolve().parent.parent
FAULTS = (
    "db_slow_query",
    "traffic_surge",
    "bad_deployment",
    "cache_eviction_storm",
    "upstream_outage",
    # the same faults without the simulator's telemetry hints (no deployment counter, no cache hit metric)
    "bad_deployment_nohint",
    "cache_eviction_storm_nohint",
)
CLI = [sys.executable, "-c", "from metaheal.cli import main; main()"]
#: the simulator with the demo's fleet tunings (metaheal.demo.run_demo)
SIM_ARGS = [
    "--interval",
    "0.5",
    "--ready-delay",
    "3",
    "--restart-seconds",
    "3",
    "--day-amplitude",
    "0.03",
    "--day-seconds",
    "600",
]


@dataclass
class FaultRun:
    fault: str
    result: FlowResult | None = None
    anomaly_at: float | None = None
    focus_at: float | None = None
    plans: list[str] = field(default_factory=list)
    not_success: list[str] = field(default_factory=list)
    affected: list[str] = field(default_factory=list)
    problem: str | None = None


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("METAHEAL_")}


def prepare(
    kafka: KafkaSettings, workdir: Path, deny: list[str], timing: dict[str, float] | None = None
) -> tuple[Settings, Path, Path]:
    """Fresh prefix, the demo's tuned settings, keys and the demo operator; returns settings, config, operator key.

    ``timing`` overrides the demo's cycle and window settings (``cycle_seconds``, ``window_seconds``,
    ``allowed_lateness_seconds``): e.g. 5 s cycles with the default 10 s windows and 5 s lateness.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    settings = demo_settings(Settings(kafka=kafka), workdir, prefix)
    timing = timing or {}
    if "cycle_seconds" in timing:
        settings.cycle.cycle_seconds = timing["cycle_seconds"]
    if "window_seconds" in timing:
        settings.streams.window_seconds = timing["window_seconds"]
    if "allowed_lateness_seconds" in timing:
        settings.streams.allowed_lateness_seconds = timing["allowed_lateness_seconds"]
    span = settings.streams.window_seconds + settings.streams.allowed_lateness_seconds
    settings.cycle.evidence_window_seconds = max(settings.cycle.evidence_window_seconds, 2 * span)
    if deny:
        settings.executor.deny_playbooks = {"*": list(deny)}
    settings.playbooks = resolve_playbooks(ROOT / "playbooks").resolve()
    ensure_topics(settings)
    init_system_keys(settings.keys)
    operator_key = add_demo_operator(settings)
    return settings, write_settings(settings, workdir / "metaheal.yaml"), operator_key


async def wait_for_line(path: Path, needle: str, timeout: float, proc: asyncio.subprocess.Process) -> str | None:
    """The first line of a growing log file containing ``needle`` (None: timeout or the process ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if needle in line:
                    return line
        if proc.returncode is not None:
            return None
        await asyncio.sleep(0.1)
    return None


async def stop_process(proc: asyncio.subprocess.Process, grace: float = 20.0) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


def log_time(line: str) -> float | None:
    """Epoch seconds of a ``metaheal`` log line (``%(asctime)s``: local time, milliseconds after a comma)."""
    try:
        stamp, ms = line[:23].split(",")
        return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
    except ValueError:
        return None


async def run_fault(
    kafka: KafkaSettings,
    fault: str,
    workdir: Path,
    *,
    warmup: float,
    timeout: float,
    seed: int,
    verbose: bool,
    deny: list[str],
    timing: dict[str, float] | None = None,
) -> FaultRun:
    run = FaultRun(fault)
    settings, config, operator_key = await asyncio.to_thread(prepare, kafka, workdir, deny, timing)
    log = open(workdir / "timeline.log", "w")  # noqa: SIM115 (closed below)

    def emit(line: str) -> None:
        log.write(line + "\n")
        log.flush()
        if verbose:
            print(f"  {line}", flush=True)

    up_log, sim_log = workdir / "up.log", workdir / "simulate.log"
    with open(up_log, "wb") as out:
        up = await asyncio.create_subprocess_exec(
            *CLI,
            "up",
            "--config",
            str(config),
            "--workdir",
            str(workdir),
            cwd=workdir,
            env=clean_env(),
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    sim: asyncio.subprocess.Process | None = None
    timeline = Timeline(settings, emit)
    driver: Driver | None = None
    stop = asyncio.Event()
    operator: asyncio.Task[None] | None = None
    try:
        if await wait_for_line(up_log, "runtime starting", 90.0, up) is None:
            run.problem = f"metaheal up did not start (see {up_log})"
            return run
        await asyncio.to_thread(timeline.start)
        with open(sim_log, "wb") as out:
            sim = await asyncio.create_subprocess_exec(
                *CLI,
                "simulate",
                "--config",
                str(config),
                "--scenario",
                fault,
                "--at",
                str(warmup),
                "--seed",
                str(seed),
                *SIM_ARGS,
                cwd=workdir,
                env=clean_env(),
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        if await wait_for_line(sim_log, "services registered", 60.0, sim) is None:
            run.problem = f"the simulator did not register its services (see {sim_log})"
            return run
        # the operator checks /health by the registered admin URLs, as the executor does
        snap = await asyncio.to_thread(read_registry, settings)
        settings.services = [to_service(r) for r in snap.services.values()]
        graph = {s.name: list(s.dependencies) for s in settings.services}
        faults = scenario_faults(fault)
        hit = affected_services([f.target for f in faults], graph)
        driver = Driver(
            settings, timeline, lambda _name: faults, operator_key_path=operator_key, emit=emit, flow_timeout=timeout
        )
        operator = asyncio.create_task(driver.operator(stop))
        line = await wait_for_line(sim_log, "scenario injected", warmup + 60.0, sim)
        if line is None:
            run.problem = f"the simulator did not inject (see {sim_log})"
            return run
        injected = log_time(line) or time.time()
        res = await driver.run_flow(fault_flow(fault))
        res.started_at = injected
        run.result = res
        for s in timeline.snapshot():
            e = s.event
            if s.at < injected:
                continue
            if isinstance(e, AnomalyScore) and e.crossed and e.service in hit and run.anomaly_at is None:
                run.anomaly_at = s.at
            if (
                isinstance(e, CycleFocus)
                and e.focus_area != "routine_maintenance"
                and run.focus_at is None
                and set(e.target_services) & hit
            ):
                run.focus_at = s.at
            if res.fixed_at is not None and s.at > res.fixed_at:
                continue
            if isinstance(e, AgenticPlan):
                run.plans.append(f"{e.selected_playbook}@{e.service}")
            if isinstance(e, SignedOutcome) and e.result != "success":
                run.not_success.append(f"{e.playbook}@{e.service}:{e.result}")
        run.affected = sorted(hit)
        return run
    finally:
        stop.set()
        if operator is not None:
            await operator
        if sim is not None:
            await stop_process(sim)
        await stop_process(up)
        timeline.stop()
        if driver is not None:
            driver.close()
        log.close()


async def main_async(args: argparse.Namespace) -> int:
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    for f in faults:
        scenario_faults(f)  # unknown name: fail now
    workdir = Path(args.workdir).resolve()
    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker = EmbeddedBroker(port=free_port(), log_path=workdir / "tansu.log")
        workdir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(broker.start)
        bootstrap = broker.bootstrap
    kafka = KafkaSettings(bootstrap=bootstrap)
    print(
        f"broker {bootstrap}; per fault: metaheal up + metaheal simulate --scenario F --at {args.warmup:g} "
        f"(two processes, fresh prefix); logs under {workdir}"
    )
    print("the script plays the operator 'demo-operator' for approval requests (demo rule and demo key)")
    if args.deny:
        print(f"denied playbooks (executor.deny_playbooks['*']): {', '.join(args.deny)}")
    timing = {
        k: float(v)
        for k, v in (
            ("cycle_seconds", args.cycle_seconds),
            ("window_seconds", args.window_seconds),
            ("allowed_lateness_seconds", args.lateness_seconds),
        )
        if v is not None
    }
    if timing:
        print("timing overrides: " + ", ".join(f"{k}={v:g}" for k, v in timing.items()))
    runs: list[FaultRun] = []
    try:
        for f in faults:
            started = time.monotonic()
            r = await run_fault(
                kafka,
                f,
                workdir / f,
                warmup=args.warmup,
                timeout=args.timeout,
                seed=args.seed,
                verbose=args.verbose,
                deny=args.deny,
                timing=timing,
            )
            runs.append(r)
            verdict = r.problem or (
                "HEALED"
                if r.result and r.result.ok
                else "NOT HEALED: " + "; ".join(r.result.reasons if r.result else [])
            )
            print(f"{f}: {verdict} ({time.monotonic() - started:.0f}s wall)", flush=True)
    finally:
        if broker is not None:
            broker.stop()
    report = DemoReport(
        flows=[r.result for r in runs if r.result is not None],
        blocked=[f"{r.fault}: {r.problem}" for r in runs if r.problem],
    )
    summarize(report, print, workdir)
    print()
    print(
        "detection = the earlier of the two columns below: the first crossed anomaly on a service the fault "
        "affects, the first non-routine cycle targeting such a service (affected: the fault's target and every "
        "service calling it or called by it, transitively, by the registered dependencies; "
        "metaheal.demo.affected_services)"
    )
    print(
        f"{'fault':<21} {'anomaly':>8} {'focus':>8}  plans until the fix (playbook@service, in order) | "
        "outcomes other than success"
    )
    for r in runs:
        if r.result is None:
            continue
        print(
            f"{r.fault:<21} {r.result.seconds(r.anomaly_at):>8} {r.result.seconds(r.focus_at):>8}  "
            f"{', '.join(r.plans) or 'none'} | {', '.join(r.not_success) or 'none'}"
        )
    return 0 if report.flows and all(f.ok for f in report.flows) and not report.blocked else 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--faults", default=",".join(FAULTS))
    p.add_argument("--warmup", type=float, default=30.0, help="simulate --at: seconds of quiet telemetry first")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a fault may take to heal")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", default=None, help="use this broker instead of an embedded one")
    p.add_argument("--workdir", default="bench-faults", help="configs, keys and logs per fault")
    p.add_argument(
        "--deny",
        action="append",
        default=[],
        metavar="PLAYBOOK",
        help="deny this playbook everywhere (executor.deny_playbooks): what happens without the right fix",
    )
    p.add_argument("--cycle-seconds", type=float, default=None, help="meta loop cycle (demo: 8)")
    p.add_argument("--window-seconds", type=float, default=None, help="health window (demo: 2, default: 10)")
    p.add_argument("--lateness-seconds", type=float, default=None, help="allowed lateness (demo: 1, default: 5)")
    p.add_argument("-v", "--verbose", action="store_true", help="print the timeline as it happens")
    sys.exit(asyncio.run(main_async(p.parse_args())))


if __name__ == "__main__":
    main()
