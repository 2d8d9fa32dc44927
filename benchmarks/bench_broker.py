"""Embedded broker start-up time: seconds from spawn until it answers Kafka metadata.

    python benchmarks/bench_broker.py [--runs 7] [--durable]

Prints the median (and min/max) of several starts, in memory and, with
``--durable``, on local S3 storage (s3rver + tansu; a fresh data dir and a
restart on the same dir). Numbers on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from metaheal.broker import EmbeddedBroker, free_port
from metaheal.durable import durable_broker
from metaheal.s3local import install_s3rver


def _summary(name: str, xs: list[float]) -> str:
    return (
        f"{name:<28} median {statistics.median(xs) * 1000:7.1f} ms   "
        f"min {min(xs) * 1000:7.1f} ms   max {max(xs) * 1000:7.1f} ms   (n={len(xs)})"
    )


def memory_starts(runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        b = EmbeddedBroker(port=free_port())
        out.append(b.start())
        b.stop()
    return out


def durable_starts(runs: int) -> tuple[list[float], list[float]]:
    install_s3rver()
    fresh, again = [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"
            for bucket in (fresh, again):
                t0 = time.monotonic()
                with durable_broker("127.0.0.1", free_port(), data):
                    bucket.append(time.monotonic() - t0)
    return fresh, again


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--durable", action="store_true", help="also time s3rver + tansu s3:// starts")
    args = ap.parse_args()
    print(_summary("tansu start (memory)", memory_starts(args.runs)))
    if args.durable:
        fresh, again = durable_starts(max(3, args.runs // 2))
        print(_summary("s3rver+tansu (new dir)", fresh))
        print(_summary("s3rver+tansu (restart)", again))


if __name__ == "__main__":
    main()
