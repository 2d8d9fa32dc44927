"""Streams worker benchmark: end-to-end vs model-only samples/s, and produce->anomaly latency.

    python benchmarks/bench_streams.py [--n 200000] [--services 10] [--batch 500] [--load 5000] [--seconds 10]

Same as ``metaheal bench scorer``; the logic lives in :mod:`metaheal.streams.bench`.
"""

from metaheal.streams.bench import main

if __name__ == "__main__":
    main()
