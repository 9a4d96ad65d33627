"""What a study's connectors would cost at the paper's shape: model FLOPs per training sample of each stage for CLIP
ViT-L/14 at 448 px (1,024 patches) and Vicuna-7B, and the relative time against `mlp` that they predict.

This is a projection, not a measurement: training time is taken as proportional to model FLOPs (the same count as
the trainer's MFU: 2 x weights per token forward; backward 2x where weights train, 1x where gradients only pass), the
connector's forward is measured with the zoo's FLOP counter at that shape, and the text lengths per sample are the
ones the paper's own timings imply (shared/reference/paper.md: 80-180 tokens per pre-training sample, 700-860 per
fine-tuning sample; the midpoints are used). The paper measured -80 % (pre-training) and -51 % (fine-tuning) for
C-Abstractor against the two-layer MLP at 448 px.
"""
from __future__ import annotations

import inspect

from ..connectors import CONNECTORS
from ..connectors.describe import describe

# CLIP ViT-L/14 (width 1024, 24 layers, MLP 4096) at 448 px; Vicuna-7B (width 4096, 32 layers, MLP 11008, 32k vocabulary)
VISION_DIM, PATCHES, GRID = 1024, 1024, (32, 32)
VISION_WEIGHTS = 24 * (4 * 1024**2 + 2 * 1024 * 4096)
LLM_DIM, LLM_WEIGHTS, HEAD_WEIGHTS = 4096, 32 * (4 * 4096**2 + 3 * 4096 * 11008), 4096 * 32000
TEXT_TOKENS = {"pretrain": 130, "finetune": 780}  # midpoints of what the paper's timings imply
SUPERVISED = {"pretrain": 30, "finetune": 300}  # answer tokens (the LM head runs there only); a small share of the cost
PAPER = {"c_abstractor": {"pretrain": -80.0, "finetune": -51.0}}  # measured by the authors at 448 px, vs mlp
BUDGETS = (64, 144)  # the paper's token budgets


def stage_flops(visual_tokens: int, connector_flops: float, stage: str) -> float:
    """Training FLOPs of one sample: LM (3x in fine-tuning, 2x in pre-training: its input gradient reaches the
    connector), connector (3x: it trains in both stages), frozen tower (forward only)."""
    llm = (3 if stage == "finetune" else 2) * (2 * LLM_WEIGHTS * (visual_tokens + TEXT_TOKENS[stage])
                                                + 2 * HEAD_WEIGHTS * SUPERVISED[stage])
    return llm + 3 * connector_flops + 2 * VISION_WEIGHTS * (PATCHES + 1)


def settings(connectors: list[str]) -> list[tuple[str, dict]]:
    """Each connector at its default options, at each of the paper's budgets where it takes one."""
    out = []
    for name in dict.fromkeys(["mlp", *connectors]):
        params = inspect.signature(CONNECTORS[name].__init__).parameters
        out += [(name, {"num_tokens": q}) for q in BUDGETS] if "num_tokens" in params else [(name, {})]
    return out


def project(connectors: list[str]) -> list[dict]:
    """One row per setting: visual tokens, connector FLOPs and per-stage FLOPs per sample, and the change against mlp."""
    rows = []
    for name, options in settings(connectors):
        try:
            info = describe(name, VISION_DIM, LLM_DIM, GRID, **options)
        except ValueError:  # a budget the connector cannot make at this grid
            continue
        rows.append({"connector": name, "options": options, "visual_tokens": info["output_tokens"],
                     "connector_flops": info["flops"],
                     **{f"{s}_flops": stage_flops(info["output_tokens"], info["flops"], s) for s in TEXT_TOKENS}})
    base = next(r for r in rows if r["connector"] == "mlp")
    for r in rows:
        for s in TEXT_TOKENS:
            r[f"{s}_change_pct"] = 100 * (r[f"{s}_flops"] / base[f"{s}_flops"] - 1)
    return rows


def projection_section(connectors: list[str]) -> list[str]:
    rows = project(connectors)
    lines = ["## Training cost at the paper's shape (a projection from model FLOPs, not a measurement)", "",
             "CLIP ViT-L/14 at 448 px (1,024 patches) and Vicuna-7B; text per sample as the paper's timings imply "
             f"({TEXT_TOKENS['pretrain']} tokens in pre-training, {TEXT_TOKENS['finetune']} in fine-tuning); "
             "each connector at its default options. Time is taken as proportional to FLOPs.", "",
             "| connector | Q | pre-train TFLOP/sample | vs mlp | fine-tune TFLOP/sample | vs mlp | the paper measured |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        paper = PAPER.get(r["connector"])
        measured = f"{paper['pretrain']:+.0f} % / {paper['finetune']:+.0f} %" if paper else ""
        lines.append(f"| {r['connector']} | {r['visual_tokens']} | {r['pretrain_flops'] / 1e12:.1f} | "
                     f"{r['pretrain_change_pct']:+.0f} % | {r['finetune_flops'] / 1e12:.1f} | {r['finetune_change_pct']:+.0f} % "
                     f"| {measured} |")
    return lines + [""]
