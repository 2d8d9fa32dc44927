"""The README's kcat one-liner replays one cycle straight from the topic."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from metaheal.config import Settings
from metaheal.kcat import shell_line
from tests.ledger.conftest import build_chain, rec, write_raw

pytestmark = pytest.mark.broker


@pytest.mark.skipif(not (shutil.which("kcat") and shutil.which("jq")), reason="needs kcat and jq (make tools)")
def test_kcat_one_liner_replays_one_cycle(chain_settings: Settings) -> None:
    chain = build_chain(chain_settings, 12, cycle_len=4)
    write_raw(chain_settings, [rec(e) for e in chain])
    topic = chain_settings.topics.name("ledger")
    line = shell_line(chain_settings.kafka.bootstrap, "-C", "-e", "-J", "-t", topic)
    line += " | jq -c 'select(.key|startswith(\"cycle-1/\"))'"
    done = subprocess.run(line, shell=True, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    records = [json.loads(x) for x in done.stdout.decode().splitlines()]
    want = [e for e in chain if e.cycle_id == "cycle-1"]
    assert [r["key"] for r in records] == [f"cycle-1/{e.sequence}" for e in want]
    headers = dict(zip(records[0]["headers"][::2], records[0]["headers"][1::2], strict=True))
    assert headers == {
        "cycle_id": "cycle-1",
        "actor": want[0].actor,
        "action": want[0].action,
        "signature": want[0].signature,
    }
