"""The service registry on ``<prefix>services``: what a running control plane learns, and what it refuses."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metaheal.cli import app
from metaheal.config import ServiceSettings, Settings
from metaheal.events import DeadLetter, ServiceRegistration
from metaheal.kafka import Consumer, Producer
from metaheal.kafka.serializers import AvroDeserializer
from metaheal.ledger.keys import init_system_keys
from metaheal.ledger.signing import RecordSigner
from metaheal.registry import RegistryPublisher, read_registry, registration
from metaheal.runtime import Runtime

pytestmark = [pytest.mark.broker]
ASYNC = pytest.mark.asyncio(loop_scope="session")


async def until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def publish(settings: Settings, *services: ServiceSettings) -> None:
    init_system_keys(settings.keys)  # registrations are signed with the registrar key
    pub = RegistryPublisher(settings)
    try:
        pub.register([registration(s, "test") for s in services])
    finally:
        pub.close()


@ASYNC
async def test_running_control_plane_merges_registrations_live_and_configured_entries_win(
    topics: Settings, tmp_path: Path
) -> None:
    topics.services = [ServiceSettings(name="db", criticality="critical")]  # configured, without an admin URL
    publish(topics, ServiceSettings(name="early", admin_url="http://127.0.0.1:1"))  # before up started
    runtime = Runtime(topics, ["executor"], workdir=tmp_path)
    await runtime.follow_registry()
    try:
        assert topics.service("early") is not None  # read to the end before any component is built
        publish(
            topics,
            ServiceSettings(name="api", admin_url="http://127.0.0.1:2", dependencies=["db"]),
            ServiceSettings(name="db", admin_url="http://127.0.0.1:3", criticality="low"),
        )
        await until(lambda: topics.service("api") is not None and topics.service("db").admin_url is not None)
        api, db = topics.service("api"), topics.service("db")
        assert api is not None and api.dependencies == ["db"] and api.admin_url == "http://127.0.0.1:2"
        # the configured entry wins; the registration only fills its missing admin_url
        assert db is not None and db.criticality == "critical" and db.admin_url == "http://127.0.0.1:3"

        pub = RegistryPublisher(topics)
        pub.deregister(["api"])
        pub.close()
        await until(lambda: topics.service("api") is None)
        assert topics.service("db") is not None  # configured services stay
    finally:
        runtime.close()


@ASYNC
async def test_invalid_registration_goes_to_the_dead_letter_topic_with_the_field(
    topics: Settings, tmp_path: Path
) -> None:
    runtime = Runtime(topics, ["executor"], workdir=tmp_path)
    await runtime.follow_registry()
    try:
        bad = {"name": "pay", "admin_url": "tcp://10.0.0.1", "registered_by": "script", "ts": 1.0}
        init_system_keys(topics.keys)
        value = json.dumps(bad).encode()  # signed: what is refused here is the URL, not the writer
        headers = RecordSigner(topics.keys, "registrar").sign("service_registration", value, key="pay", record_id="pay")
        with Producer(topics.kafka) as p:
            p.send(topics.topics.name("services"), value, key="pay", headers=headers)
        publish(topics, ServiceSettings(name="after", admin_url="http://127.0.0.1:4"))
        await until(lambda: topics.service("after") is not None)
        assert topics.service("pay") is None
        de = AvroDeserializer(DeadLetter)

        def dead() -> list[DeadLetter]:
            with Consumer(topics.kafka) as c:
                return [de(m.value()) for m in c.read_to_end(topics.topics.name("deadletter"))]

        deadline = time.monotonic() + 10
        letters: list[DeadLetter] = []
        while not letters and time.monotonic() < deadline:
            letters = await asyncio.to_thread(dead)
        assert len(letters) == 1, letters
        assert letters[0].source_topic == topics.topics.name("services") and letters[0].key == b"pay"
        assert "admin_url: must be an http:// or https:// URL (got 'tcp://10.0.0.1')" in letters[0].error
    finally:
        runtime.close()


def test_components_see_the_dependency_graph_of_later_registrations(topics: Settings) -> None:
    """The meta loop and the advisors read the graph live, so a caller of a late-registered service counts as one."""
    from metaheal.agents.advisors.root_cause import RootCauseSuggester
    from metaheal.agents.advisors.service import AdvisorService
    from metaheal.agents.meta.learning import Learner
    from metaheal.agents.meta.observations import Observations

    obs = Observations(topics, Learner(half_life=3600.0))
    advisors = AdvisorService(topics)
    try:
        assert obs.dependencies == {} and advisors._graph == {}
        topics.services = [ServiceSettings(name="api", dependencies=["db"]), ServiceSettings(name="db")]
        assert obs.dependencies == {"api": ["db"], "db": []}
        assert advisors._graph == {"api": ["db"], "db": []}
        suggester = next(a for a in advisors.advisors if isinstance(a, RootCauseSuggester))
        assert suggester.graph == {"api": ["db"], "db": []}
    finally:
        advisors.producer.close()


def test_services_cli_registers_lists_and_rejects_bad_input_naming_the_field(topics: Settings, tmp_path: Path) -> None:
    init_system_keys(topics.keys)
    env = {
        "METAHEAL_TOPICS__PREFIX": topics.topics.prefix,
        "METAHEAL_BOOTSTRAP": topics.kafka.bootstrap or "",
        "METAHEAL_KEYS": str(topics.keys),
    }
    run = CliRunner().invoke
    r = run(app, ["services", "register", "db", "--admin-url", "localhost:9000"], env=env)
    assert r.exit_code == 2 and "admin_url: must be an http:// or https:// URL (got 'localhost:9000')" in r.output
    f = tmp_path / "svc.yaml"
    f.write_text(
        "services:\n  - name: api\n    admin_url: http://127.0.0.1:5\n    dependencies: [db]\n"
        "  - name: db\n    criticality: urgent\n"
    )
    r = run(app, ["services", "register", "--file", str(f)], env=env)
    assert r.exit_code == 2 and f"{f}: services.1: criticality:" in r.output, r.output
    assert read_registry(topics).services == {}  # nothing of a rejected file is published
    f.write_text("services:\n  - name: api\n    admin_url: http://127.0.0.1:5\n    dependencies: [db]\n")
    r = run(app, ["services", "register", "--file", str(f)], env=env)
    assert r.exit_code == 0, r.output
    r = run(app, ["services", "register", "db", "--admin-url", "http://127.0.0.1:6", "--criticality", "high"], env=env)
    assert r.exit_code == 0, r.output
    r = run(app, ["services", "list", "--json"], env=env)
    regs = {x.name: x for x in (ServiceRegistration.model_validate_json(line) for line in r.output.splitlines())}
    assert regs["api"].dependencies == ["db"] and regs["db"].criticality == "high"
    assert regs["db"].registered_by.startswith("metaheal services register@")
    r = run(app, ["services", "remove", "api"], env=env)
    assert r.exit_code == 0 and set(read_registry(topics).services) == {"db"}
