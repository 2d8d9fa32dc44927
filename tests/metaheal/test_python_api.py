"""The design's "API Usage" snippets, as docs/python-api.md prints them, run against a real demo run.

The snippets run verbatim (their import lines are metaheal's); the one change is the design's
example cycle id, replaced by the cycle the demo's latency flow healed in, so the replay has
something to show. What they print is checked against what the demo itself saw and printed
(its timeline, its ``metaheal ledger replay`` run in a subprocess) and against the topics.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path
from typing import Any

import pytest

from metaheal.agents.meta.leader import fast_reader, read_to_end
from metaheal.agents.meta_coordinated_healing import meta_coordinated_healing
from metaheal.events import CycleFocus, FocusArea, GuardrailAdjustment, SignedOutcome
from metaheal.kafka.serializers import AvroDeserializer
from metaheal.ledger import immutable_log
from tests.metaheal.conftest import DemoRun

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

DOC = Path(__file__).resolve().parents[2] / "docs" / "python-api.md"
DESIGN_CYCLE = "cycle_20250115_143000_42"
ISO_Z = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z"


def snippets() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 3, f"{DOC}: expected the design's three snippets, found {len(blocks)}"
    return blocks


async def run(source: str, namespace: dict[str, Any]) -> list[str]:
    """Run a snippet as ``python -m asyncio`` would (top-level await), returning the lines it printed."""
    code = compile(source, str(DOC), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = eval(code, namespace)  # our own documentation's code
        if result is not None:
            await result
    return out.getvalue().splitlines()


def topic_events(run_: DemoRun, short: str, model: type) -> list[Any]:
    de = AvroDeserializer(model)
    with fast_reader(run_.settings.kafka) as c:
        return [de(m.value()) for m in read_to_end(c, run_.settings.topics.name(short), timeout=20) if m.value()]


def cli_replay_signatures(text: str, cycle_id: str) -> list[str]:
    """The signature prefixes ``metaheal ledger replay CYCLE`` printed during the demo (a separate process)."""
    block = text.split(f"$ metaheal ledger replay {cycle_id}", 1)[1].split("\n$ ", 1)[0].split("\n===", 1)[0]
    return re.findall(r"sig ([0-9a-f]{12})…", block)


@pytest.mark.timeout(300)
async def test_design_api_snippets_run_as_written(demo_run: DemoRun, monkeypatch: pytest.MonkeyPatch) -> None:
    latency, errors = demo_run.report.flows[0], demo_run.report.flows[1]
    assert latency.ok and errors.ok, demo_run.text[-3000:]
    healed_in = latency.key_cycles[-1]  # the cycle of the verified outcome that healed the latency flow
    replay_src, learning_src, monitor_src = snippets()
    assert DESIGN_CYCLE in replay_src
    monkeypatch.chdir(demo_run.workdir)  # configured as an operator there would be: from ./metaheal.yaml
    immutable_log.reset()
    meta_coordinated_healing.reset()
    ns: dict[str, Any] = {}
    try:
        replayed = await run(replay_src.replace(DESIGN_CYCLE, healed_in), ns)
        await run(learning_src, ns)
        monitored = await run(monitor_src, ns)
    finally:
        immutable_log.reset()
        meta_coordinated_healing.reset()
    learned = f"success_count={ns['success_count']} success_rate={ns['success_rate']:.2f}"
    learned += f" training_data={ns['training_data']}"
    print("\n".join(["--- replay", *replayed, "--- learning data", learned, "--- monitor", *monitored]))

    # 1. replay: three lines per entry, in order, the design's vocabulary, the signatures the CLI showed
    assert replayed and len(replayed) % 3 == 0, replayed
    heads, sigs, results = replayed[0::3], replayed[1::3], replayed[2::3]
    pairs = []
    for head in heads:
        m = re.fullmatch(rf"({ISO_Z}) - ([a-z_:.-]+): ([a-z_]+)", head)
        assert m, head
        pairs.append((m[2], m[3]))
    stamps = [h.split(" - ")[0] for h in heads]
    assert stamps == sorted(stamps)
    results = [r.removeprefix("  Result: ") for r in results]
    steps = {(actor, action, result) for (actor, action), result in zip(pairs, results, strict=True)}
    assert pairs[0] == ("meta_loop", "cycle_focus_decided") and results[0] == "decided"
    assert ("ml_advisors", "advice_provided", "advised") in steps
    assert {("meta_loop", "directive_issued"), ("agentic_planner", "plan_created")} <= set(pairs)
    assert ("executor", "execution_outcome", "success") in steps
    assert all(re.fullmatch(r"  Signature: [0-9a-f]{128}", s) for s in sigs), sigs
    assert [s.removeprefix("  Signature: ")[:12] for s in sigs] == cli_replay_signatures(demo_run.text, healed_in)

    # 2. learning data: the signed outcomes are those the executor published, with the design's keys
    published = topic_events(demo_run, "outcomes", SignedOutcome)
    outcomes, training_data = ns["outcomes"], ns["training_data"]
    assert outcomes and len(outcomes) == len(published) <= 100
    assert ns["success_count"] == sum(o.result == "success" for o in published)
    assert ns["success_rate"] == pytest.approx(ns["success_count"] / len(published))
    assert {"playbook": "scale_up_instances", "context": healed_in, "success": True} in training_data
    assert {"playbook": "rollback_flag", "context": errors.key_cycles[-1], "success": True} in training_data
    assert sorted(o["outcome_id"] for o in outcomes) == sorted(o.outcome_id for o in published)

    # 3. monitoring: the latest cycle on the topic, and the last ten outcomes, oldest first
    cycles = topic_events(demo_run, "cycles", CycleFocus)
    latest = max(cycles, key=lambda c: c.ts)
    assert isinstance(ns["current"].focus_area, FocusArea)
    assert isinstance(ns["current"].guardrail_adjustment, GuardrailAdjustment)
    assert monitored[:2] == [f"Focus: {latest.focus_area}", f"Guardrails: {latest.guardrail_adjustment}"]
    assert monitored[0].removeprefix("Focus: ") in {f.value for f in FocusArea}
    last10 = sorted(published, key=lambda o: o.ts)[-10:]
    assert monitored[2:] == [f"{o.playbook}: {o.result}" for o in last10]
    assert "rollback_flag: success" in monitored[2:]
