"""The console in a real browser: headless Chromium (Debian's package) against `metaheal up --console-port`
and `metaheal simulate --scenario error_spike`, both on the embedded broker.

One run of the fleet serves every check, in the order an operator meets them: the overview
shows the simulated services and the cycle's reasoning; the fault's plan (rollback_flag
needs a human at the demo guardrails) appears under Approvals; a key that is not the
operator's is refused; the operator's key file, opened in the page and used by WebCrypto,
approves the plan, which the executor runs (its outcome appears and the ledger holds the
operator's signed decision); the cycle's page replays the ledger with verified signatures.

``METAHEAL_SCREENSHOTS=docs/console`` (read at import, before the test session clears
``METAHEAL_*``) saves the overview, the approval and the cycle page there.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from metaheal.agents.executor.approvals import verify_signature
from metaheal.config import OperatorSettings, Settings
from metaheal.events import ApprovalDecision
from metaheal.ledger.canonical import canonical_json
from metaheal.ledger.keys import init_operator_key
from metaheal.ledger.proof import chain_entries
from metaheal.ledger.verify import read_raw

REPO = Path(__file__).resolve().parents[2]
_SHOTS = os.environ.get("METAHEAL_SCREENSHOTS")
SCREENSHOTS = (REPO / _SHOTS if not Path(_SHOTS).is_absolute() else Path(_SHOTS)) if _SHOTS else None
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")

CLI = [sys.executable, "-c", "from metaheal.cli import main; main()"]
SIM_ARGS = [
    "--interval", "0.5", "--ready-delay", "3", "--restart-seconds", "3",
    "--day-amplitude", "0.03", "--day-seconds", "600", "--seed", "0",
]  # fmt: skip
FLEET = ("web", "api_cluster", "db", "cache", "payments")
REASON = "error spike after deploy"

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def wait_for_text(path: Path, pattern: str, timeout: float, proc: subprocess.Popen[bytes]) -> re.Match[str] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and (m := re.search(pattern, path.read_text(errors="replace"))):
            return m
        time.sleep(0.2)
    return None


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(5)


def chrome() -> webdriver.Chrome:
    """Headless Chromium from Debian's packages, the driver path given (Selenium Manager downloads nothing)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("chromium and chromium-driver are not installed (`make tools` installs them)")
    os.environ["SE_OFFLINE"] = "true"
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1200"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)


def shot(driver: webdriver.Chrome, name: str) -> None:
    if SCREENSHOTS is not None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


@pytest.fixture
def fleet(settings: Settings, tmp_path: Path) -> Iterator[tuple[Settings, str, Path, Path]]:
    """`metaheal up --console-port 0` and `metaheal simulate --scenario error_spike`; yields the console URL."""
    from metaheal.demo import demo_settings
    from metaheal.runtime import write_settings
    from metaheal.topics import ensure_topics

    s = demo_settings(settings, tmp_path, settings.topics.prefix)
    key_path, public_hex = init_operator_key(s.keys, "alice")
    s.operators = [OperatorSettings(name="alice", public_key=public_hex, services=["*"])]
    config = write_settings(s, tmp_path / "metaheal.yaml")
    ensure_topics(s)
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAHEAL_")}
    up_log, sim_log = tmp_path / "up.log", tmp_path / "simulate.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for log, args in (
            (up_log, ["up", "--config", str(config), "--workdir", str(tmp_path), "--console-port", "0"]),
            (sim_log, ["simulate", "--config", str(config), "--scenario", "error_spike", "--at", "15", *SIM_ARGS]),
        ):
            with open(log, "wb") as out:
                procs.append(
                    subprocess.Popen(
                        [*CLI, *args], cwd=tmp_path, env=env, stdout=out, stderr=out, start_new_session=True
                    )
                )
            if log == up_log:
                m = wait_for_text(up_log, r"metaheal console on (http://\S+)", 60, procs[0])
                assert m and wait_for_text(up_log, "runtime starting", 60, procs[0]), up_log.read_text()[-3000:]
                url = m.group(1).rstrip("/")
        yield s, url, key_path, up_log
    finally:
        codes = [stop(p) for p in reversed(procs)]
    assert codes[-1] == 0 and "up stopped cleanly" in up_log.read_text(), up_log.read_text()[-3000:]


@pytest.mark.timeout(200)
def test_console_in_chromium(fleet: tuple[Settings, str, Path, Path], tmp_path: Path) -> None:
    s, url, alice_key, up_log = fleet
    wrong_key = tmp_path / "mallory.key"
    wrong_key.write_text(SigningKey(b"m" * 32).encode().hex() + "\n")
    driver = chrome()
    try:

        def text(css: str) -> str:  # read in one script: the page may re-render between find and read
            return driver.execute_script(
                "const e = document.querySelector(arguments[0]); return e ? e.innerText : ''", css
            )

        def wait(pred, timeout: float, what: str):  # type: ignore[no-untyped-def]
            try:
                return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda _: pred())
            except Exception as exc:
                raise AssertionError(
                    f"{what}; page: {text('main')[:1500]}\nup.log: {up_log.read_text()[-2000:]}"
                ) from exc

        # the overview: every simulated service, and a cycle with its reasoning, arriving live (no reload)
        driver.get(url + "/")
        wait(lambda: all(f'data-service="{n}"' in driver.page_source for n in FLEET), 40, "services missing")
        wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#current-cycle .reasoning li"), 40, "no cycle reasoning")
        assert driver.find_element(By.ID, "live").text == "live"
        # new health windows re-render the page from the event stream, without a reload
        wait(lambda: driver.execute_script("return window.metahealRendered"), 20, "no live re-render")

        # the browser's canonical JSON is byte for byte the server's (what both sign and verify)
        sample = {
            "reason": 'naïve "quoted" \\ line\nbreak\t\u0001 € 😀',
            "decided_at": 1764763012.123456,
            "big": 1e21,
            "small": 1e-7,
            "zero": -0.0,
            "Z": "upper sorts first",
        }
        assert driver.execute_script("return window.metahealCanonical(arguments[0])", sample) == canonical_json(sample)

        # the fault's plan needs a human: it appears under Approvals
        driver.get(url + "/approvals")
        wait(lambda: driver.find_elements(By.CSS_SELECTOR, "article.approval"), 90, "no approval request appeared")
        plan_id, card = driver.execute_script(
            "const a = document.querySelector('article.approval'); return [a.dataset.planId, a.innerText];"
        )
        assert "rollback_flag" in card and "blast radius" in card
        assert "never leaves this browser" in driver.find_element(By.ID, "signer").text
        driver.get(url + "/")
        wait(lambda: text("#pending-count") == "1", 10, "pending count not shown")
        shot(driver, "overview")
        driver.get(url + "/approvals")
        wait(lambda: driver.find_elements(By.ID, f"approval-{plan_id}"), 10, "approval card missing")

        def click(decision: str) -> str:
            driver.execute_script("document.getElementById('decision-status').textContent = ''")
            # found and clicked in one script: the list re-renders whenever the approvals topic changes
            driver.execute_script(
                f"document.querySelector('#approval-{plan_id} button[data-decision={decision}]').click()"
            )
            wait(
                lambda: text("#decision-status") and not text("#decision-status").startswith("Sending"), 15, "no answer"
            )
            return text("#decision-status")

        # a key that is not the operator's: the page warns, the server refuses, nothing is published
        driver.find_element(By.ID, "keyfile").send_keys(str(wrong_key))
        wait(lambda: "not registered" in text("#key-status"), 10, "wrong key not flagged")
        answer = click("approve")
        assert answer.startswith("Refused (wrong key"), answer
        assert "is not operator alice's registered key" in answer

        # the operator's key: approve; the executor runs the plan and its outcome appears
        driver.find_element(By.ID, "keyfile").send_keys(str(alice_key))
        wait(lambda: "registered to operator alice" in text("#key-status"), 10, "alice's key not recognised")
        driver.execute_script(
            f"document.querySelector('#approval-{plan_id} input.reason').value = arguments[0]", REASON
        )
        shot(driver, "approval")
        answer = click("approve")
        assert answer.startswith(f"Approved plan {plan_id} as alice"), answer
        driver.get(url + "/outcomes")
        wait(lambda: "approved_by:alice" in text("#outcomes"), 90, "no outcome of the approved plan")
        row_text, cycle_href = driver.execute_script(
            "const r = [...document.querySelectorAll('#outcomes tbody tr')]"
            ".find((r) => r.innerText.includes('approved_by:alice'));"
            "return [r.innerText, r.querySelector('a').href];"
        )
        assert "rollback_flag" in row_text

        # the ledger holds the operator's decision, signed by alice's key in the browser
        entries = chain_entries(read_raw(s))
        received = [
            e for e in entries if e.action == "approval_received" and json.loads(e.payload).get("plan_id") == plan_id
        ]
        assert received and received[0].result == "approve", [e.action for e in entries]
        payload = json.loads(received[0].payload)  # the decision, plus the executor's directive_id and service
        decision = ApprovalDecision.model_validate({k: payload[k] for k in ApprovalDecision.model_fields})
        assert decision.operator == "alice" and decision.reason == REASON
        assert len(decision.plan_hash) == 64 and decision.nonce  # signed in the browser, bound to the plan
        assert verify_signature(decision, s.operators[0].public_key)
        assert "trust_violation" not in {e.action for e in entries if e.cycle_id == received[0].cycle_id}

        # the cycle's page: ledger replay with each signature checked, and the provenance tree
        driver.get(cycle_href)
        wait(lambda: "approval_received" in text("#timeline"), 15, "cycle timeline lacks the decision")
        rows = driver.execute_script(
            "return [...document.querySelectorAll('#timeline tbody tr')].map((r) => r.innerText)"
        )
        assert rows and all("✓ verifies" in r for r in rows), rows
        assert plan_id in text("pre.tree")
        shot(driver, "cycle")
    finally:
        driver.quit()
