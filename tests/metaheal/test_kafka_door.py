"""Every Kafka client is built in ``metaheal/kafka/``: no other package module imports a Kafka library."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_FOLDERS = ("metaheal", "agents", "streams", "ledger", "schemas")
KAFKA_LIBRARIES = {"confluent_kafka", "aiokafka"}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_only_metaheal_kafka_imports_kafka_libraries() -> None:
    door = ROOT / "metaheal" / "kafka"
    offenders = sorted(
        str(path.relative_to(ROOT))
        for folder in PACKAGE_FOLDERS
        for path in (ROOT / folder).rglob("*.py")
        if door not in path.parents and _imported_roots(path) & KAFKA_LIBRARIES
    )
    assert offenders == []


def test_the_door_itself_is_seen() -> None:
    assert "confluent_kafka" in _imported_roots(ROOT / "metaheal" / "kafka" / "consumer.py")
