"""The quick start of this commit against another commit's, side by side in one sitting, each from a fresh clone.

This machine's speed drifts by up to 2x between days and by tens of per cent within an hour, so a time measured
another day says nothing; this script alternates the two commits (the order flips every round) and reports each
round's pair and the ratio. Each run is `benchmarks/quickstart_time.py` of the clone's own code (its acceptance
checks included), in the current environment.

    python benchmarks/quickstart_compare.py --against 5ad5516 [--rounds 1] [--first head|against]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from connectorlab.utils.io import atomic_write_json  # noqa: E402


def clone(rev: str, where: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(ROOT), str(where)], check=True)
    subprocess.run(["git", "checkout", "-q", rev], cwd=where, check=True)
    return where


def measure(folder: Path, out: Path) -> dict:
    subprocess.run([sys.executable, "benchmarks/quickstart_time.py", "--json", str(out)], cwd=folder, check=True,
                   stdout=subprocess.DEVNULL)
    result = json.loads(out.read_text())
    keep = ("wall_clock_s", "mlp_at_least_twice_chance_everywhere", "mlp_accuracy_over_chance", "fine_gap_mlp_vs_avgpool")
    return {k: result.get(k) for k in keep}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", required=True, help="the other commit")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--first", choices=("head", "against"), default="head", help="which commit runs first in round 1")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "quickstart_compare.json"))
    args = ap.parse_args()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folders = {"head": clone(head, tmp / "head"), "against": clone(args.against, tmp / "against")}
        rounds = []
        for r in range(args.rounds):
            order = ["head", "against"] if (args.first == "head") == (r % 2 == 0) else ["against", "head"]
            runs = {name: measure(folders[name], tmp / f"{name}-{r}.json") for name in order}
            rounds.append({"order": order, **runs,
                           "ratio_head_over_against": runs["head"]["wall_clock_s"] / runs["against"]["wall_clock_s"]})
            print(json.dumps(rounds[-1], indent=2), flush=True)
    result = {"head": head, "against": args.against, "rounds": rounds,
              "mean_ratio_head_over_against": sum(r["ratio_head_over_against"] for r in rounds) / len(rounds)}
    atomic_write_json(args.json, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
