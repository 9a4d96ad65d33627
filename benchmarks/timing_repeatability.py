"""How often the quick start's "trains faster" verdict comes out the same when its paired step timing is run again.

The quick start times each resolution's cells side by side after they trained (study/timing.py) and judges every
compressing cell against the reference by the rounds' signed-rank test and the ratio of median steps. This script
repeats that timing on a finished quick start folder as the quick start runs it (one group at a time, in a fresh
single-threaded worker process: one per repeat), and reports per cell and stage how many repeats judged it faster,
with the spread of the median-step ratio and of the paired per-round ratio. Nothing in the folder changes.

    python benchmarks/timing_repeatability.py [--out runs/quickstart_bench] [--repeats 8]
        [--json benchmarks/results/timing_repeatability.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.quickstart_time import code_version, package_versions  # noqa: E402
from connectorlab.connectors import CONNECTORS  # noqa: E402
from connectorlab.probe.generate import ProbeParams  # noqa: E402
from connectorlab.probe.presets import TinySizes  # noqa: E402
from connectorlab.study.findings import STAGE_KEYS, stage_verdict  # noqa: E402
from connectorlab.study.plan import expand  # noqa: E402
from connectorlab.study.pool import run_pool  # noqa: E402
from connectorlab.study.quickstart import CONFIG_FILE, QuickstartConfig, prepare, quickstart_plan  # noqa: E402
from connectorlab.study.timing import time_group, timing_groups  # noqa: E402
from connectorlab.utils.io import atomic_write_json  # noqa: E402


def load_quickstart(folder: Path) -> QuickstartConfig:
    """The settings a finished quick start folder was made with (the file `connectorlab quickstart` writes there), its
    `out` as given then: the cells' configurations, and so their ids, hold the paths made from it."""
    path = folder / CONFIG_FILE
    if not path.exists():
        raise SystemExit(f"{path}: not found; run `connectorlab quickstart --out {folder}` first")
    saved = json.loads(path.read_text())
    if not Path(saved["out"]).is_dir() or not Path(saved["out"]).samefile(folder):
        raise SystemExit(f"{path}: made with --out {saved['out']}, which is not {folder} from here; run this script "
                         "from the directory the quick start ran in")
    return QuickstartConfig(**{**saved, "probe": ProbeParams(**saved["probe"]), "sizes": TinySizes(**saved["sizes"])})


def time_once(groups, out: Path, timing) -> dict[str, dict]:
    """One repeat: every group timed in one fresh worker process, one group after another, as the study does."""
    found: dict[str, dict] = {}

    def done(job, args, result) -> None:
        found.update(result)

    def failed(job, args, err) -> None:
        raise err

    run_pool([(time_group, (g, out, timing)) for g in groups], 1, 1, done, failed)
    return found


def judge(repeats: list[dict], pairs: list[tuple[str, str]]) -> dict[str, dict]:
    """Per compared cell and stage: the verdict of each repeat (as the report's rule gives it) and the ratios."""
    summary = {}
    for label, ref in pairs:
        for name, stage in STAGE_KEYS.items():
            rows = []
            for found in repeats:
                a, b = found[label][stage], found[ref][stage]
                medians = (1000 * statistics.median(a), 1000 * statistics.median(b))
                ok, words = stage_verdict(name, medians, label, found, ref)
                paired = statistics.median([x / y for x, y in zip(a, b, strict=True)])
                rows.append({"faster": ok, "median_ratio": round(medians[0] / medians[1], 4),
                             "paired_median_ratio": round(paired, 4),
                             "words": words})
            ratios = [r["median_ratio"] for r in rows]
            summary[f"{label} {stage}"] = {
                "faster_in_repeats": sum(r["faster"] for r in rows), "repeats": len(rows),
                "median_ratio_range": [min(ratios), max(ratios)],
                "paired_median_ratio_range": [min(r["paired_median_ratio"] for r in rows),
                                              max(r["paired_median_ratio"] for r in rows)],
                "each": rows}
    return summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "runs" / "quickstart_bench"), help="a finished quick start folder")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "timing_repeatability.json"))
    args = ap.parse_args()
    qc = load_quickstart(Path(args.out))
    out = Path(qc.out)
    plan = quickstart_plan(qc, *prepare(qc, None))  # everything exists: nothing is drawn or trained again
    groups = timing_groups(expand(plan, out))
    reference = plan.reference_connector
    pairs = [(c.label, next(r.label for r in g if r.connector == reference)) for g in groups for c in g
             if c.connector != reference and CONNECTORS[c.connector].family == "compressing"]
    code = code_version()
    repeats, seconds = [], []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        repeats.append(time_once(groups, out, plan.timing))
        seconds.append(round(time.perf_counter() - t0, 1))
        print(f"repeat {i + 1}/{args.repeats}: {seconds[-1]} s", flush=True)
    summary = judge(repeats, pairs)
    for key, s in summary.items():
        print(f"{key}: faster in {s['faster_in_repeats']} of {s['repeats']} repeats; median-step ratio "
              f"{s['median_ratio_range'][0]:.3f}-{s['median_ratio_range'][1]:.3f}, paired per-round ratio "
              f"{s['paired_median_ratio_range'][0]:.3f}-{s['paired_median_ratio_range'][1]:.3f}")
    atomic_write_json(args.json, {
        "benchmark": "the quick start's paired step timing repeated on one finished folder: how often each "
                     "compressing cell's 'trains faster' verdict holds",
        "folder": str(out), "quickstart": dataclasses.asdict(qc) | {"plan": None}, "timing": dataclasses.asdict(plan.timing),
        "repeats": args.repeats, "seconds_per_repeat": seconds, "cells": summary,
        **code, "packages": package_versions()})


if __name__ == "__main__":
    main()
