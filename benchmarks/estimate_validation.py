"""`study plan --estimate` checked against what is published and what was measured, as JSON.

- Time: LLaVA-1.5-7B's published training times (LLaVA's README: pre-training about 3.5 h on 8x A100-80GB, ZeRO-2;
  visual instruction tuning about 10 h on 8x A100-40GB, ZeRO-3; both with gradient checkpointing, as its scripts
  run) against the model FLOPs of the paper grid's `mlp-336px` cell: the MFU those hours imply, and the hours the
  estimate predicts at its default MFU.
- Savings: the paper's C-Abstractor training-time savings against the two-layer MLP at 448 px (-80 % pre-training,
  -51 % fine-tuning) against the estimate's FLOP ratios, at 64 and 144 tokens.
- Memory: the estimate's per-process memory against the peak measured above the process's baseline, per engine, from
  `benchmarks/train_throughput.py`'s JSON (run that first).

    python benchmarks/estimate_validation.py
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from connectorlab.utils.io import atomic_write_json  # noqa: E402

PLAN = ROOT / "configs/studies/paper_7b_accelerate.yaml"
# LLaVA-1.5-7B, from LLaVA's README: (stage, hours, GPUs, GPU, the sharding its script uses)
PUBLISHED = [("pretrain", 3.5, 8, "a100-80gb", "zero2"), ("finetune", 10.0, 8, "a100-40gb", "zero3")]
PAPER_SAVINGS = {"pretrain": -0.80, "finetune": -0.51}  # C-Abstractor vs two-layer MLP at 448 px (the paper)
DEFAULT_MFU = 0.4  # the CLI's default


def costs() -> dict:
    from connectorlab.study.cost import cell_costs
    from connectorlab.study.plan import StudyPlan, describe_cells, expand

    plan = StudyPlan.from_file(PLAN)
    cells = expand(plan)
    return {c.label: c for c in cell_costs(plan, cells, describe_cells(plan, cells), 8)}


def time_rows(grid: dict) -> list[dict]:
    from connectorlab.study.estimate import peak_flops

    rows = []
    for stage, hours, gpus, gpu, engine in PUBLISHED:
        sc = grid["mlp-336px-s0"].stages[stage]
        flops = sc.gc_flops_per_sample * sc.samples  # LLaVA's scripts checkpoint gradients
        peak = peak_flops(gpu)[1]
        predicted = flops / (gpus * peak * DEFAULT_MFU) / 3600
        rows.append({"stage": stage, "published_hours": hours, "gpus": gpus, "gpu": gpu, "engine": engine,
                     "samples": sc.samples, "model_flops": flops, "implied_mfu": flops / (gpus * peak * hours * 3600),
                     "predicted_hours_at_default_mfu": predicted, "error_at_default_mfu": predicted / hours - 1,
                     "memory_gib_with_gc": sc.memory[engine][1], "fits": sc.memory[engine][1] <= peak_flops(gpu)[0]})
    return rows


def saving_rows(grid: dict) -> list[dict]:
    rows = []
    for tokens in (64, 144):
        for stage, paper in PAPER_SAVINGS.items():
            c_abs = grid[f"c_abstractor-{tokens}t-448px-s0"].stages[stage].flops_per_sample
            mlp = grid["mlp-448px-s0"].stages[stage].flops_per_sample
            rows.append({"tokens": tokens, "stage": stage, "paper_saving": paper, "estimated_saving": c_abs / mlp - 1})
    return rows


def memory_rows() -> list[dict] | str:
    path = ROOT / "benchmarks/results/train_throughput.json"
    if not path.exists():
        return "run benchmarks/train_throughput.py first"
    runs = [r for r in json.loads(path.read_text())["runs"] if "memory_model_error" in r]
    out = []
    for size in sorted({r["size"] for r in runs}):
        for engine in ("ddp", "fsdp", "zero2", "zero3"):
            mine = [r for r in runs if r["size"] == size and r["engine"] == engine]
            if mine:
                out.append({"size": size, "engine": engine, "measured_mb": [r["training_memory_mb"] for r in mine],
                            "estimated_mb": [r["estimated_mb"] for r in mine],
                            "error": statistics.mean(r["memory_model_error"] for r in mine)})
    return out


def main() -> None:
    grid = costs()
    result = {"benchmark": "study plan --estimate against published times, the paper's savings and measured memory",
              "plan": str(PLAN.relative_to(ROOT)), "time": time_rows(grid), "savings": saving_rows(grid),
              "memory": memory_rows(), "date": time.strftime("%Y-%m-%d")}
    atomic_write_json(ROOT / "benchmarks/results/estimate_validation.json", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
