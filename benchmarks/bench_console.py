"""The web console in headless Chromium: page load time, and event-to-screen latency of a new cycle.

    python benchmarks/bench_console.py [--bootstrap HOST:PORT] [--services 5] [--windows 90] [--cycles 200] [--n 20]

Without ``--bootstrap`` an embedded tansu broker (in memory) is started. The topics are
filled with a fleet's worth of history (registrations, ``--windows`` health windows of six
signals per service, ``--cycles`` cycles, outcomes, approval requests), then
``metaheal console`` is started in its own process and driven by Debian's chromium:

* page load: each page loaded ``--n`` times; the navigation timing's response start,
  DOMContentLoaded and load event (ms from navigation start), median and p95;
* event to screen: ``--n`` times, a new ``CycleFocus`` is published and the time until the
  overview shows its id is taken (the page hears of it over server-sent events and fetches
  the re-rendered fragment); measured from just before the produce call to the DOM
  mutation, on one clock (browser and broker on this machine). Also the time until the
  event stream delivered the change.

The machine is shared with other runs: treat the numbers as indicative.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from metaheal.broker import EmbeddedBroker, free_port
from metaheal.config import KafkaSettings, Settings, TopicSettings
from metaheal.events import (
    AgenticPlan,
    ApprovalRequest,
    CycleFocus,
    HealthWindow,
    RiskAssessment,
    ServiceRegistration,
    SignalStats,
    SignedOutcome,
)
from metaheal.kafka import Producer
from metaheal.kafka.serializers import AvroSerializer
from metaheal.runtime import write_settings
from metaheal.topics import ensure_topics

SIGNALS = ("latency", "errors", "traffic", "saturation", "capacity", "dependency")
OBSERVE = """
const want = arguments[0];
window.__seen = null;
const check = () => {
  const el = document.querySelector('#current-cycle');
  if (el && el.dataset.cycleId === want && window.__seen === null) window.__seen = Date.now();
};
new MutationObserver(check).observe(document.getElementById('main'), {childList: true, subtree: true});
check();
"""


def cycle(cycle_id: str, ts: float) -> CycleFocus:
    return CycleFocus(
        cycle_id=cycle_id,
        ts=ts,
        focus_area="latency_drift",
        confidence=0.7,
        reasoning=["p95 latency 240 ms vs baseline 120 ms on api", "traffic steady: not load"],
        guardrail_adjustment="maintain",
        guardrail_level="maintain",
        time_budget_seconds=60,
        target_services=["svc0"],
    )


def fill(settings: Settings, services: int, windows: int, cycles: int, rng: random.Random) -> None:
    ser = {m: AvroSerializer(m) for m in (ServiceRegistration, HealthWindow, CycleFocus, SignedOutcome)}
    now = time.time()
    t = settings.topics.name
    with Producer(settings.kafka) as p:
        for i in range(services):
            reg = ServiceRegistration(
                name=f"svc{i}", admin_url=f"http://127.0.0.1:{9000 + i}", registered_by="bench", ts=now
            )
            p.produce(t("services"), ser[ServiceRegistration](reg), key=reg.name)
            for w in range(windows):
                end = now - (windows - w) * 2.0
                stats = [
                    SignalStats(
                        signal=s, metric=f"{s}_m", count=10, mean=100 + rng.random() * 10, p50=100.0,
                        p95=120 + rng.random() * 20, max=150.0, baseline_mean=100.0, baseline_p95=125.0,
                    )
                    for s in SIGNALS
                ]  # fmt: skip
                win = HealthWindow(
                    service=reg.name, window_start=end - 2, window_end=end, sample_count=60, signals=stats
                )
                p.produce(t("health"), ser[HealthWindow](win), key=reg.name)
        for c in range(cycles):
            p.produce(t("cycles"), ser[CycleFocus](cycle(f"hist-{c}", now - (cycles - c) * 8.0)), key=f"hist-{c}")
            if c % 4 == 0:
                o = SignedOutcome(
                    outcome_id=f"out-{c}", plan_id=f"plan-{c}", directive_id=f"d-{c}", cycle_id=f"hist-{c}",
                    service=f"svc{c % services}", playbook="scale_up_instances", result="success",
                    duration_seconds=12.5, verification_passed=True, trust_decision="auto_approved",
                    actor="executor", actor_signature="00" * 64, ts=now - (cycles - c) * 8.0,
                )  # fmt: skip
                p.produce(t("outcomes"), ser[SignedOutcome](o), key=o.outcome_id)
        for i in range(3):
            plan = AgenticPlan(
                plan_id=f"plan-pending-{i}", directive_id=f"d-p{i}", cycle_id=f"hist-{cycles - 1}", ts=now,
                service=f"svc{i % services}", selected_playbook="rollback_flag", steps=[], verifications=[],
                rollback_plan=[], trust_approval_required=True, estimated_duration=20.0,
                risk_assessment=RiskAssessment(impact="high", blast_radius=2, risk_score=0.6), confidence=0.8,
            )  # fmt: skip
            p.produce(t("plans"), AvroSerializer(AgenticPlan)(plan), key=plan.service)
            req = ApprovalRequest(
                request_id=f"req-{plan.plan_id}", plan_id=plan.plan_id, cycle_id=plan.cycle_id, service=plan.service,
                playbook=plan.selected_playbook, reason="impact high", plan_summary="rollback_flag",
                requested_at=now, expires_at=now + 3600,
            )  # fmt: skip
            p.produce(t("approvals"), AvroSerializer(ApprovalRequest)(req), key=plan.plan_id)
        p.flush()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap")
    ap.add_argument("--services", type=int, default=5)
    ap.add_argument("--windows", type=int, default=90)
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--n", type=int, default=20)
    args = ap.parse_args()
    rng = random.Random(0)
    os.environ["SE_OFFLINE"] = "true"
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        bootstrap = args.bootstrap
        if not bootstrap:
            broker = EmbeddedBroker(port=free_port())
            broker.start()
            stack.callback(broker.stop)
            bootstrap = broker.bootstrap
        settings = Settings(
            kafka=KafkaSettings(bootstrap=bootstrap), topics=TopicSettings(prefix=f"bench{uuid.uuid4().hex[:6]}.")
        )
        settings.keys = Path(tmp) / "keys"
        ensure_topics(settings)
        fill(settings, args.services, args.windows, args.cycles, rng)
        config = write_settings(settings, Path(tmp) / "metaheal.yaml")
        port = free_port()
        log = Path(tmp) / "console.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("METAHEAL_")}
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", "from metaheal.cli import main; main()", "console", "--config", str(config),
                 "--port", str(port)],
                stdout=out, stderr=out, env=env, start_new_session=True,
            )  # fmt: skip
        stack.callback(lambda: (proc.send_signal(signal.SIGTERM), proc.wait(20)))
        deadline = time.monotonic() + 60
        while not re.search(r"metaheal console on", log.read_text()):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"console did not start:\n{log.read_text()}")
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        opts = webdriver.ChromeOptions()
        opts.binary_location = "/usr/bin/chromium"
        for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
            opts.add_argument(a)
        driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=opts)
        stack.callback(driver.quit)
        driver.get(url + "/")
        time.sleep(2.0)  # the console's view catches up with the history (it rebuilds on start)
        print(
            f"history: {args.services} services x {args.windows} health windows x {len(SIGNALS)} signals, "
            f"{args.cycles} cycles, {args.cycles // 4} outcomes, 3 pending approvals"
        )
        print(
            f"{'page':<12} {'response ms':>12} {'DOMContentLoaded ms':>20} {'load ms':>9}   (median / p95 of {args.n})"
        )
        for page in ("/", "/cycles", "/approvals", "/outcomes"):
            rows = []
            for _ in range(args.n):
                driver.get(url + page)
                rows.append(
                    driver.execute_script(
                        "const n = performance.getEntriesByType('navigation')[0];"
                        "return [n.responseStart, n.domContentLoadedEventEnd, n.loadEventEnd];"
                    )
                )
            cols = list(zip(*rows, strict=True))
            cells = [f"{statistics.median(c):.1f} / {pct(list(c), 0.95):.1f}" for c in cols]
            print(f"{page:<12} {cells[0]:>12} {cells[1]:>20} {cells[2]:>9}")

        driver.get(url + "/")
        time.sleep(1.0)
        ser = AvroSerializer(CycleFocus)
        screen, stream = [], []
        with Producer(settings.kafka) as p:
            for i in range(args.n):
                cid = f"bench-{i}-{uuid.uuid4().hex[:6]}"
                driver.execute_script(OBSERVE, cid)
                t0 = time.time()
                p.send(settings.topics.name("cycles"), ser(cycle(cid, t0)), key=cid)
                deadline = time.monotonic() + 10
                seen = None
                while seen is None and time.monotonic() < deadline:
                    seen = driver.execute_script("return window.__seen")
                    time.sleep(0.005)
                if seen is None:
                    raise SystemExit(f"cycle {cid} never reached the screen")
                ev = driver.execute_script("return window.metahealLastEvent")
                screen.append(seen - t0 * 1000)
                stream.append(ev["received"] - t0 * 1000)
                time.sleep(0.3)
        print(
            f"new cycle -> event stream: median {statistics.median(stream):.1f} ms, p95 {pct(stream, 0.95):.1f} ms; "
            f"-> on screen: median {statistics.median(screen):.1f} ms, p95 {pct(screen, 0.95):.1f} ms, "
            f"max {max(screen):.1f} ms (n={args.n})"
        )


if __name__ == "__main__":
    main()
