"""Wall-clock time of `connectorlab quickstart` from an empty output folder, plus its acceptance checks.

Runs the CLI exactly as a user would (a fresh process, nothing cached), checks that every figure
is a readable PNG, and reads results.csv for: the MLP scoring at least twice chance on every task
type, and the fine-grained gap between mlp and avgpool at each resolution lying outside their 95%
intervals. Prints and saves JSON.

    python benchmarks/quickstart_time.py [--out runs/quickstart_bench] [--json benchmarks/results/quickstart_time.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from connectorlab.utils.io import atomic_write_json  # noqa: E402


def code_version() -> dict:
    """The commit, and the library files that differed from it (a number measured on uncommitted code says so)."""
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout  # noqa: E731
    changed = git("status", "--porcelain", "--untracked-files=no", "--", "connectorlab").split()[1::2]
    return {"commit": git("rev-parse", "HEAD").strip(), "uncommitted_library_changes": changed}


def package_versions() -> dict[str, str]:
    """The installed versions the numbers depend on: a fresh install can resolve an unpinned one to another release."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "tokenizers", "accelerate", "safetensors", "numpy", "pillow"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "runs" / "quickstart_bench"))
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "quickstart_time.json"))
    ap.add_argument("--limit-s", type=float, default=300.0)
    ap.add_argument("quickstart", nargs="*", help="extra quick start options, after --, e.g. -- --seed 1")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    code = code_version()  # as the run starts: the code it ran
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "connectorlab", "quickstart", "--out", str(out), *args.quickstart], cwd=ROOT,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    if res.returncode:
        raise SystemExit(f"quickstart failed with exit code {res.returncode}")
    figures = {}
    for png in sorted(out.glob("*.png")):
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            figures[png.name] = list(im.size)
    results = pd.read_csv(out / "results.csv")
    df = results[(results.level == "task_type") & (results.benchmark == "probe")]  # the study's rows, as the report's
    mlp = df[df.connector == "mlp"]
    twice = {f"{r.name}@{r.resolution}": round(r.accuracy / r.chance, 2) for r in mlp.itertuples()}
    gaps = {}
    for a in df[(df.connector == "avgpool") & (df.name == "fine")].itertuples():  # every resolution and budget
        m = df[(df.connector == "mlp") & (df.resolution == a.resolution) & (df.name == "fine")].iloc[0]
        gaps[f"{a.resolution}px-{int(a.tokens)}t"] = {
            "mlp": [m.accuracy, m.ci_low, m.ci_high], "avgpool": [a.accuracy, a.ci_low, a.ci_high],
            "outside_intervals": bool(m.ci_low > a.ci_high or a.ci_low > m.ci_high)}
    report = (out / "report.md").read_text()
    verdicts = [line.removeprefix("- ").split("**")[1] for line in report.splitlines() if line.startswith("- **")]
    result = {
        "benchmark": "connectorlab quickstart, fresh output folder, cells in the plan's worker processes",
        "wall_clock_s": wall, "limit_s": args.limit_s, "within_limit": wall <= args.limit_s,
        "figures": figures, "mlp_accuracy_over_chance": twice,
        "mlp_at_least_twice_chance_everywhere": all(v >= 2 for v in twice.values()),
        "options": args.quickstart, "fine_gap_mlp_vs_avgpool": gaps, "cells": int(df.cell.nunique()), "verdicts": verdicts,
        **code,
        "cpu_count": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
        "packages": package_versions(),
    }
    atomic_write_json(args.json, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
