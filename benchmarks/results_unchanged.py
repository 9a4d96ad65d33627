"""Are two study folders' results the same, cell for cell? For a refactor that must not move a number: every
(cell, benchmark, level, name) row's question count, accuracy, interval and no-image accuracy compared exactly
between a reference results.csv (e.g. docs/quickstart/results.csv, the last recorded quick start) and a new one.
Timing columns are not compared (they are measurements of the machine, not of the code).

    python benchmarks/results_unchanged.py docs/quickstart/results.csv runs/quickstart/results.csv \
        --json benchmarks/results/refactor_unchanged.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pandas as pd

KEY = ["cell", "benchmark", "level", "name"]
COMPARED = ["n", "accuracy", "ci_low", "ci_high", "blind_accuracy", "visual_tokens", "connector_parameters",
            "connector_flops"]


def compare(reference: Path, new: Path) -> dict:
    a, b = (pd.read_csv(p).set_index(KEY).sort_index() for p in (reference, new))
    only_a, only_b = sorted(map(str, set(a.index) - set(b.index))), sorted(map(str, set(b.index) - set(a.index)))
    both = a.index.intersection(b.index)
    differing = {}
    for col in COMPARED:
        x, y = a.loc[both, col], b.loc[both, col]
        same = (x == y) | (x.isna() & y.isna())
        if not same.all():
            differing[col] = {"rows": int((~same).sum()),
                              "first": [{"row": str(i), "reference": x[i], "new": y[i]} for i in same[~same].index[:10]]}
    return {"reference": str(reference), "new": str(new), "rows_compared": len(both), "columns": COMPARED,
            "only_in_reference": only_a, "only_in_new": only_b, "differing": differing,
            "identical": not (only_a or only_b or differing)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reference", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--reference-commit", help="the commit that wrote the reference folder, recorded in the JSON")
    args = ap.parse_args()
    result = compare(args.reference, args.new)
    result["reference_commit"] = args.reference_commit
    result["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(json.dumps({k: result[k] for k in ("rows_compared", "identical", "only_in_reference", "only_in_new")}))
    for col, d in result["differing"].items():
        print(f"{col}: {d['rows']} rows differ, e.g. {d['first'][0]}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
