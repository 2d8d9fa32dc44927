"""Streams worker at N series: end-to-end/model ratio, RSS per series, checkpoint bytes, restart, two workers.

    python benchmarks/bench_scale.py [--series 20000] [--samples 50] [--checkpoint-interval 120] [--live-seconds S]

Same as ``metaheal bench scale``; the logic lives in :mod:`metaheal.streams.bench_scale`.
"""

from metaheal.streams.bench_scale import main

if __name__ == "__main__":
    main()
