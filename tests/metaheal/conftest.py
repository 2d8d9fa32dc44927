"""One real demo run per test session, shared by the tests that judge it (it takes minutes)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from metaheal.broker import EmbeddedBroker
from metaheal.config import KafkaSettings, Settings, TopicSettings
from metaheal.demo import FLOWS, DemoReport, demo_settings, run_demo
from tests.conftest import TEST_SESSION_TIMEOUT_MS


@dataclass(frozen=True)
class DemoRun:
    settings: Settings
    workdir: Path
    report: DemoReport
    text: str  # everything the demo printed


@pytest.fixture(scope="session")
async def demo_run(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The demo's three flows against the session broker (what ``metaheal demo`` runs), once."""
    workdir = tmp_path_factory.mktemp("demo")
    prefix = f"t{uuid.uuid4().hex[:10]}."
    base = Settings(
        kafka=KafkaSettings(bootstrap=broker.bootstrap, session_timeout_ms=TEST_SESSION_TIMEOUT_MS),
        topics=TopicSettings(prefix=prefix),
        keys=workdir / "keys",
        playbooks=Path(__file__).resolve().parents[2] / "playbooks",
    )
    s = demo_settings(base, workdir, prefix)
    lines: list[str] = []
    report = await asyncio.wait_for(run_demo(s, workdir, lines.append, flow_timeout=60.0, flows=FLOWS), 240)
    return DemoRun(s, workdir, report, "\n".join(lines))
