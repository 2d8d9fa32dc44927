"""Cost of signed bus records: microseconds to sign and to verify one record (``metaheal.ledger.signing``).

Signs and verifies real records (an Avro directive, a JSON executor-state record of a plan with
steps) with keys from a fresh key registry, the way the meta loop and the executor do: sign =
envelope + Ed25519 signature; verify = envelope parse, writer table, time bounds, registry
lookup, signature check. Reports the median and p95 of ``--rounds`` timed batches, per record.

    python benchmarks/bench_signing.py [--records 2000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from nacl.signing import SigningKey

from metaheal.events import Directive, DirectiveAdvice
from metaheal.kafka.serializers import AvroSerializer
from metaheal.ledger.keys import init_system_keys
from metaheal.ledger.signing import RecordSigner, RecordVerifier


def _directive(i: int) -> bytes:
    d = Directive(
        directive_id=f"dir_cycle_{i}_api",
        cycle_id=f"cycle_{i}",
        ts=1.7e9 + i,
        service="api",
        focus_area="latency_drift",
        guardrail_level="maintain",
        ml_advice=DirectiveAdvice(root_causes=["cache_miss_rate_high"], recommended_playbooks=["warm_cache"]),
        confidence=0.9,
        time_budget_seconds=120,
    )
    return AvroSerializer(Directive)(d)


def _state(i: int) -> bytes:
    steps = ",".join('{"action":"http.post","params_json":"{\\"url\\":\\"http://h/scale\\"}"}' for _ in range(4))
    return (f'{{"directive_id":"d{i}","service":"api","status":"executing","plan_json":"[{steps}]",'
            f'"steps_done":2,"outputs":{{}},"rationale":["planned scale_up_instances"]}}').encode()  # fmt: skip


def _per_record(fn, n: int, rounds: int) -> tuple[float, float]:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) / n * 1e6)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.95 * len(times)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    keys = Path(tempfile.mkdtemp()) / "keys"
    init_system_keys(keys)
    verifier = RecordVerifier(keys, max_age=900.0)
    print(f"records per round: {args.records}, rounds: {args.rounds}")
    # the floor: PyNaCl's Ed25519 alone on a 300-byte message (the rest is envelope, table, registry, bounds)
    sk = SigningKey(b"\x01" * 32)
    msg = b"m" * 300
    sig = sk.sign(msg)
    raw_s = _per_record(lambda: [sk.sign(msg) for _ in range(args.records)], args.records, args.rounds)
    raw_v = _per_record(lambda: [sk.verify_key.verify(sig) for _ in range(args.records)], args.records, args.rounds)
    print(f"{'Ed25519 alone':24s} {'':32s}sign {raw_s[0]:6.1f} us (p95 {raw_s[1]:6.1f})  verify {raw_v[0]:6.1f} us")
    for name, record_type, actor, make in (
        ("directive (Avro)", "directive", "meta_loop", _directive),
        ("executor_state (JSON)", "executor_state", "executor", _state),
    ):
        signer = RecordSigner(keys, actor)
        values = [make(i) for i in range(args.records)]
        signed: list[dict[str, bytes]] = []

        def sign_all(signer=signer, values=values, record_type=record_type, signed=signed) -> None:
            signed.clear()
            signed.extend(signer.sign(record_type, v, key="api", record_id=str(i)) for i, v in enumerate(values))

        def verify_all(values=values, record_type=record_type, signed=signed) -> None:
            for i, v in enumerate(values):
                verifier.verify(record_type, v, b"api", signed[i], record_id=str(i))

        s_med, s_p95 = _per_record(sign_all, args.records, args.rounds)
        v_med, v_p95 = _per_record(verify_all, args.records, args.rounds)
        size = sum(len(v) for v in values) / len(values)
        env = len(next(iter(signed[0].values())))
        print(
            f"{name:24s} value {size:6.0f} B  envelope {env} B  "
            f"sign {s_med:6.1f} us (p95 {s_p95:6.1f})  verify {v_med:6.1f} us (p95 {v_p95:6.1f})"
        )


if __name__ == "__main__":
    main()
