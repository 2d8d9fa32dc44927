"""NAB development split through ``metaheal score``: the corpus score and the score per category.

    python benchmarks/bench_nab.py [--nab ../shared/nab-dev] [--jobs 1]

Runs ``nab.py run`` (NAB v1.1 scoring, one threshold swept over the whole split) with the real CLI
on every file, then scores each category at the corpus' own best thresholds with nab.py's own
functions, so a category's figure is what it gets from the one threshold a deployment would use,
not from a threshold tuned to it (a category without windows shows its false-positive cost).
Needs the split beside the repository (``../shared/nab-dev``); without it, says so and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
PROFILES = {"standard": "standard", "reward_low_FP": "reward_low_FP_rate", "reward_low_FN": "reward_low_FN_rate"}
LINE = re.compile(r"^(standard|reward_low_FP|reward_low_FN)\s+score\s+(-?[\d.]+)\s+raw\s+\S+\s+threshold\s+(\S+)")


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("nab_dev_scoring", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(text: str) -> dict[str, tuple[float, float]]:
    """profile -> (normalised score, threshold) from nab.py's report."""
    out = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            out[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nab", type=Path, default=ROOT.parent / "shared" / "nab-dev")
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args(argv)
    nab = args.nab / "nab.py"
    if not nab.is_file():
        print(f"NAB development split not found at {args.nab}: skipped")
        return 0
    cli = Path(sys.executable).parent / "metaheal"
    with tempfile.TemporaryDirectory(prefix="nab-") as tmp:
        kept = Path(tmp) / "metaheal"
        command = f"{cli} score {{in}} --out {{out}}"
        run = subprocess.run(
            [sys.executable, str(nab), "run", "--jobs", str(args.jobs), "--keep", str(kept), "--cmd", command],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode != 0:
            print(run.stdout[-3000:], run.stderr[-3000:])
            return run.returncode
        corpus = parse(run.stdout)
        print(run.stdout.strip().splitlines()[-1])
        nab_mod = _load(nab)
        categories = sorted(d.name for d in (args.nab / "data").iterdir() if d.is_dir())
        used = ", ".join(f"{p} {t:.6g}" for p, (_, t) in corpus.items())
        print(f"\nper category, at the corpus' best thresholds ({used}); no windows: raw false-positive cost")
        print(f"  {'category':24} {'standard':>9} {'low_FP':>8} {'low_FN':>8}")
        fixed = {PROFILES[p]: t for p, (_, t) in corpus.items()}
        for cat in categories:
            cells = []
            sub = nab_mod.Corpus({cat})
            scores = {rel: nab_mod.read_scores(nab_mod.find_result(str(kept), rel), sub.timestamps[rel], rel, False)
                      for rel in sub.files}  # fmt: skip
            for p in PROFILES:
                cost = sub.profiles[PROFILES[p]]["CostMatrix"]
                raw = sum(v[0] for v in nab_mod.file_breakdown(sub, scores, fixed[PROFILES[p]], cost).values())
                null = -cost["fnWeight"] * sub.n_windows
                perfect = cost["tpWeight"] * sub.n_windows
                cells.append(f"{100 * (raw - null) / (perfect - null):8.1f}" if sub.n_windows else f"{raw:8.2f}")
            print(f"  {cat:24} " + " ".join(cells))
        print(f"  {'all (threshold swept)':24} " + " ".join(f"{corpus[p][0]:>8.1f}" for p in PROFILES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
