"""Labelled evaluation and throughput of the anomaly scorer, against baselines, in one run.

    python benchmarks/eval_scorer.py [--per-family 4] [--length 4000] [--seed 0]

Prints, for the metaheal scorer, river HalfSpaceTrees (defaults, min-max scaled, as commonly
deployed) and a plain exponentially weighted z-score:
- NAB score (standard and reward_low_FP profiles, 0 = never fires, 100 = perfect) at the default
  threshold ``RED_ZONE`` (0.99919, Numenta's red zone, where the scorer's best NAB threshold lies
  on the real development split) and at each detector's best threshold on the grid (NAB tunes
  thresholds per detector, so that column is the fair comparison of rankings);
- event-level precision / recall / F1 at that threshold;
- calibration: fraction of samples >= 0.999 / 0.9999 on the noise-only negatives;
- a per-family NAB breakdown for the metaheal scorer;
- model-only throughput (samples/s) of each detector on the same data.
Numbers measured while other processes use the CPU are noisy.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from river import anomaly, compose, preprocessing, stats

from metaheal.streams.backtest import (
    PROFILES,
    EventMetrics,
    NabResult,
    event_metrics,
    nab_score,
    nab_windows,
)
from metaheal.streams.scorer import RED_ZONE, AnomalyScorer

HERE = Path(__file__).resolve().parent
DEFAULT = RED_ZONE  # the operating threshold reported next to each detector's best
THRESHOLDS = tuple(
    sorted({0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, DEFAULT, 0.9995, 0.9999, 0.99999})
)
CALIBRATION = (0.999, 0.9999)


def _load(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


synthetic = _load("metaheal_bench_synthetic", HERE / "datasets" / "synthetic.py")


# --- detectors: each is a factory of a per-series callable (ts, value) -> score in [0, 1] ---------


def metaheal_detector() -> Callable[[float, float], float]:
    scorer = AnomalyScorer(seed=0)
    return lambda t, v: scorer.score_then_learn(t, v).score


def hst_detector() -> Callable[[float, float], float]:
    model = compose.Pipeline(preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(seed=0))

    def score(t: float, v: float) -> float:
        x = {"value": v}
        s = model.score_one(x)
        model.learn_one(x)
        return s

    return score


def zscore_detector() -> Callable[[float, float], float]:
    mean, var = stats.EWMean(0.01), stats.EWVar(0.01)
    seen = [0]

    def score(t: float, v: float) -> float:
        sd = math.sqrt(var.get())
        z = abs(v - mean.get()) / sd if sd > 0 else 0.0
        s = math.erf(z / math.sqrt(2)) if seen[0] >= 30 else 0.0
        mean.update(v)
        var.update(v)
        seen[0] += 1
        return s

    return score


DETECTORS: dict[str, Callable[[], Callable[[float, float], float]]] = {
    "metaheal": metaheal_detector,
    "hst": hst_detector,
    "zscore": zscore_detector,
}


# --- evaluation ---------------------------------------------------------------------------------


@dataclass
class Report:
    detector: str
    nab: dict[str, dict[float, NabResult]]  # profile -> threshold -> summed result
    events: dict[float, EventMetrics]
    negatives_rate: dict[float, float]
    per_family: dict[float, dict[str, NabResult]]  # threshold -> family -> standard NAB
    samples: int
    seconds: float

    def best(self, profile: str) -> tuple[float, float]:
        t = max(self.nab[profile], key=lambda k: self.nab[profile][k].normalized)
        return t, self.nab[profile][t].normalized


def score_corpus(
    detector: Callable[[], Callable[[float, float], float]], corpus: Sequence
) -> tuple[list[list[float]], float]:
    out, seconds = [], 0.0
    for series in corpus:
        fn = detector()
        start = time.perf_counter()
        out.append([fn(t, v) for t, v in zip(series.ts, series.values, strict=True)])
        seconds += time.perf_counter() - start
    return out, seconds


def evaluate(
    name: str,
    corpus: Sequence,
    thresholds: Sequence[float] = THRESHOLDS,
    profiles: Sequence[str] = ("standard", "reward_low_FP"),
) -> Report:
    scores, seconds = score_corpus(DETECTORS[name], corpus)
    nab: dict[str, dict[float, NabResult]] = {p: {} for p in profiles}
    events: dict[float, EventMetrics] = {}
    per_family: dict[float, dict[str, NabResult]] = {}
    neg_hits = dict.fromkeys(CALIBRATION, 0)
    neg_total = 0
    for series, s in zip(corpus, scores, strict=True):
        windows = nab_windows(len(s), series.anomalies)
        for t in thresholds:
            alarms = [x >= t for x in s]
            for p in profiles:
                r = nab_score(alarms, windows, PROFILES[p])
                nab[p][t] = nab[p][t] + r if t in nab[p] else r
                if p == "standard":
                    fam = per_family.setdefault(t, {})
                    fam[series.family] = fam[series.family] + r if series.family in fam else r
            if t == DEFAULT:
                m = event_metrics(alarms, windows)
                events[t] = events[t] + m if t in events else m
        if not series.anomalies:
            tail = s[len(s) // 5 :]
            neg_total += len(tail)
            for t in neg_hits:
                neg_hits[t] += sum(x >= t for x in tail)
    return Report(
        detector=name,
        nab=nab,
        events=events,
        negatives_rate={t: (h / neg_total if neg_total else 0.0) for t, h in neg_hits.items()},
        per_family=per_family,
        samples=sum(len(x.values) for x in corpus),
        seconds=seconds,
    )


def _family_score(r: NabResult) -> float:
    """NAB-normalised for families with windows; for negatives, minus the false-positive cost."""
    if r.perfect - r.null:
        return r.normalized
    return r.raw  # <= 0: the false-positive cost on series with nothing to find


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-family", type=int, default=4)
    parser.add_argument("--length", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detectors", default=",".join(DETECTORS))
    args = parser.parse_args(argv)
    corpus = synthetic.make_corpus(args.seed, args.per_family, args.length)
    print(
        f"corpus: {len(corpus)} series, {sum(len(s.values) for s in corpus)} samples, "
        f"{sum(len(s.anomalies) for s in corpus)} labelled anomalies, {len(synthetic.FAMILIES)} families, "
        f"seed {args.seed}"
    )
    reports = [evaluate(name, corpus) for name in args.detectors.split(",")]
    print()
    print(
        f"{'detector':10} {'NAB std@def':>11} {'lowFP@def':>9} {'NAB std best (t)':>17} {'lowFP best (t)':>16} "
        f"{'P@def':>6} {'R@def':>6} {'F1@def':>6} {'neg>=.999':>10} {'neg>=.9999':>11} {'samples/s':>10}"
    )
    for r in reports:
        tb, sb = r.best("standard")
        tl, sl = r.best("reward_low_FP")
        ev = r.events[DEFAULT]
        print(
            f"{r.detector:10} {r.nab['standard'][DEFAULT].normalized:11.1f} "
            f"{r.nab['reward_low_FP'][DEFAULT].normalized:9.1f} "
            f"{sb:9.1f} ({tb:<8.6g}) {sl:8.1f} ({tl:<8.6g}) {ev.precision:6.2f} {ev.recall:6.2f} {ev.f1:6.2f} "
            f"{r.negatives_rate[CALIBRATION[0]]:10.4f} {r.negatives_rate[CALIBRATION[1]]:11.4f} "
            f"{r.samples / r.seconds:10.0f}"
        )
    base = {r.detector: r for r in reports}
    if "metaheal" in base:
        ours = base["metaheal"]
        best = {n: b.best("standard")[0] for n, b in base.items()}
        print(
            "\nper family, standard NAB at each detector's best threshold (negatives: minus the false-positive"
            f" cost, 0 is best); metaheal at {DEFAULT:.6g} in brackets:"
        )
        for family, r in ours.per_family[best["metaheal"]].items():
            others = "  ".join(
                f"{n}={_family_score(b.per_family[best[n]][family]):.1f}" for n, b in base.items() if n != "metaheal"
            )
            at99 = _family_score(ours.per_family[DEFAULT][family])
            print(f"  {family:16} {_family_score(r):7.1f} ({at99:7.1f})   {others}")
    throughput()


def throughput(samples: int = 40_000, repeats: int = 3) -> None:
    """Model-only samples/s on one long 5-minute series (daily profile active), best of
    ``repeats`` interleaved runs so that load from other processes hits every model alike."""
    import random

    rng = random.Random(0)
    data = [
        (synthetic.T0 + 300.0 * i, 100 + 30 * math.sin(2 * math.pi * i / 288) + rng.gauss(0, 3)) for i in range(samples)
    ]

    def run_metaheal() -> None:
        scorer = AnomalyScorer(seed=0)
        for t, v in data:
            scorer.score_then_learn(t, v)

    def run_hst_raw() -> None:
        model = anomaly.HalfSpaceTrees(seed=0)
        for _, v in data:
            x = {"value": v}
            model.score_one(x)
            model.learn_one(x)

    def run_hst_scaled() -> None:
        fn = hst_detector()
        for t, v in data:
            fn(t, v)

    runs = {"metaheal": run_metaheal, "hst (raw)": run_hst_raw, "hst+minmax": run_hst_scaled}
    best = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            best[name] = max(best[name], samples / (time.perf_counter() - start))
    print(f"\nthroughput, model only, {samples} samples, best of {repeats} (noisy when other jobs share the CPU):")
    for name, rate in best.items():
        print(f"  {name:12} {rate:10.0f} samples/s   ratio metaheal/{name}: {best['metaheal'] / rate:.2f}")


if __name__ == "__main__":
    main()
