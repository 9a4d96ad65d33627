"""Questions per second of evaluation at batch size 1, 4, 16 and 64 on the probe's test set.

A tiny model (the quick start's preset sizes, `mlp` connector, 64 px) answers the probe's MMBench-layout
test set through the same `evaluate` that `connectorlab eval` calls; every batch size must give the same
answers (left-padded greedy decoding), and the goal is batch 16 at least 5x batch 1. The largest batch also runs with
the shared image prefix off (`generate(share_prefix=False)`: every prompt prefilled whole), for what sharing saves and
that it changes no answer. Each variant runs into a fresh folder, alternating rounds so that a slow moment of the
machine hits all of them alike.
Prints and saves JSON.

    python benchmarks/eval_throughput.py [--n-test 60] [--rounds 3] [--json benchmarks/results/eval_throughput.json]
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from connectorlab.evaluation.benchmarks.mmbench import load_mmbench  # noqa: E402
from connectorlab.evaluation.runner import evaluate  # noqa: E402
from connectorlab.model.config import ModelConfig  # noqa: E402
from connectorlab.model.mllm import MultimodalLM  # noqa: E402
from connectorlab.probe.generate import ProbeParams, generate  # noqa: E402
from connectorlab.probe.presets import make_random_presets  # noqa: E402
from connectorlab.utils.io import atomic_write_json  # noqa: E402

BATCHES = (1, 4, 16, 64)
VARIANTS = [(str(b), b, True) for b in BATCHES] + [(f"{BATCHES[-1]}-unshared", BATCHES[-1], False)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-test", type=int, default=60, help="probe test images (each gives several circular rows)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the fastest of each batch size counts")
    ap.add_argument("--max-new-tokens", type=int, default=6, help="the quick start's answer length")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "eval_throughput.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="eval_throughput_"))
    try:
        generate(work / "probe", ProbeParams(seed=0, image_size=64, n_train=8, n_test=args.n_test))
        presets = make_random_presets(work / "probe", work / "models", image_size=64)
        model = MultimodalLM.build(ModelConfig(vision=presets["vision"], llm=presets["llm"], connector="mlp",
                                               select_layer=-1, template="plain_v1", max_length=512)).eval()
        bench = load_mmbench(work / "probe" / "test.tsv")
        generate_shared = model.generate
        seconds: dict[str, list[float]] = {name: [] for name, _, _ in VARIANTS}
        answers: dict[str, dict[str, str]] = {}
        for r in range(args.rounds):
            for name, b, share in VARIANTS if r % 2 == 0 else reversed(VARIANTS):
                model.generate = functools.partial(generate_shared, share_prefix=share)
                out = work / f"eval-{name}-r{r}"
                res = evaluate(model, bench, out, batch_size=b, max_new_tokens=args.max_new_tokens, show_progress=False)
                seconds[name].append(res.eval_seconds)
                preds = {json.loads(line)["key"]: json.loads(line)["prediction"]
                         for line in (out / "predictions.jsonl").read_text().splitlines()}
                answers.setdefault(name, preds)
                if preds != answers[name]:
                    raise SystemExit(f"{name}: answers differ between rounds")
        items = len(bench.items)
        qps = {name: items / min(s) for name, s in seconds.items()}
        identical = all(a == answers["1"] for a in answers.values())
        speedup16 = qps["16"] / qps["1"]
        result = {
            "benchmark": "evaluate() on the probe's test set, tiny mlp model at 64 px (quick-start preset sizes)",
            "questions": items, "max_new_tokens": args.max_new_tokens, "rounds": args.rounds,
            "seconds_per_round": seconds,
            "questions_per_second": qps, "speedup_vs_batch_1": {b: q / qps["1"] for b, q in qps.items()},
            "answers_identical_across_batch_sizes": identical,
            "shared_prefix_speedup_at_largest_batch": qps[str(BATCHES[-1])] / qps[f"{BATCHES[-1]}-unshared"],
            "goal": "batch 16 at least 5x batch 1", "goal_met": speedup16 >= 5,
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    atomic_write_json(args.json, result)
    print(json.dumps(result, indent=2))
    if not identical:
        raise SystemExit("answers differ between batch sizes")


if __name__ == "__main__":
    main()
