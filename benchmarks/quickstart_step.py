"""A quick start fine-tuning step per connector, timed side by side: what "compressing trains faster" can show there.

The quick start judges training time by each cell's measured stage time, one cell after another, on a machine whose
speed drifts by 10-20 % within minutes. This benchmark times the same step (the quick start's tiny tower features,
connector, 2-layer Llama, batch 8, the probe's mean text length) for every connector of the quick start grid in
alternating rounds, so that drift hits all alike, and reports median step times and their ratio to mlp at the same
resolution. It also times the two implementation choices the quick start makes for speed, each against the other:
torch's fused AdamW against the loop over parameters, and C-Abstractor's 1x1 convolutions as a matmul
(`PointwiseConv2d`) against nn.Conv2d.

    python benchmarks/quickstart_step.py [--rounds 7] [--steps 20] [--text 61] [--out benchmarks/results/quickstart_step.json]
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.quickstart_time import code_version  # noqa: E402
from connectorlab.connectors.layers import PointwiseConv2d  # noqa: E402
from connectorlab.language.processor import IGNORE_INDEX, IMAGE_TOKEN_ID  # noqa: E402
from connectorlab.model.config import ModelConfig  # noqa: E402
from connectorlab.model.mllm import MultimodalLM  # noqa: E402
from connectorlab.model.tiny import make_llm, make_vision, make_word_tokenizer  # noqa: E402
from connectorlab.probe.presets import TinySizes  # noqa: E402
from connectorlab.study.budget import tokens_for_ratio  # noqa: E402
from connectorlab.study.quickstart import builtin_plan  # noqa: E402
from connectorlab.utils.io import atomic_write_json  # noqa: E402

BATCH, ANSWERS = 8, 8  # the quick start's fine-tuning batch; supervised tokens per sample (answers and stops)
WORDS = [f"w{i}" for i in range(100)]  # about the probe's vocabulary size


@contextlib.contextmanager
def conv2d_pointwise():
    """C-Abstractor as before PointwiseConv2d: its 1x1 convolutions run as nn.Conv2d."""
    saved = PointwiseConv2d.forward
    PointwiseConv2d.forward = nn.Conv2d.forward
    try:
        yield
    finally:
        PointwiseConv2d.forward = saved


class Cell:
    """One timed variant: a model, its optimizer and a fixed batch."""

    def __init__(self, root: Path, connector: str, options: dict, res: int, fused: bool, text: int, conv: bool = False):
        self.conv = conv
        cfg = ModelConfig(vision=str(root / "vision"), llm=str(root / "llm"), connector=connector,
                          connector_options=options, image_size=res, select_layer=-1)
        torch.manual_seed(0)
        self.model = MultimodalLM.build(cfg)
        self.model.set_trainable(vision=False, connector=True, llm=True)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=1e-4, **({"fused": True} if fused else {}))
        gen = torch.Generator().manual_seed(0)
        patches = (res // TinySizes.patch_size) ** 2
        self.visual = self.model.connector.num_output_tokens
        ids = torch.randint(len(WORDS) // 2, len(WORDS), (BATCH, text), generator=gen)
        self.ids = torch.cat([ids[:, :2], torch.full((BATCH, self.visual), IMAGE_TOKEN_ID), ids[:, 2:]], 1)
        self.labels = torch.full_like(self.ids, IGNORE_INDEX)
        self.labels[:, -ANSWERS:] = self.ids[:, -ANSWERS:]
        self.mask = torch.ones_like(self.ids)
        self.features = (torch.randn(BATCH, patches, TinySizes.vision_hidden, generator=gen), None)

    def step(self) -> None:
        with conv2d_pointwise() if self.conv else contextlib.nullcontext():
            loss = self.model(self.ids, self.mask, self.labels, vision_features=self.features, reduction="sum").loss
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def build_presets(root: Path) -> None:
    s = TinySizes()
    tok = make_word_tokenizer(root / "llm", WORDS)
    make_vision(root / "vision", "clip", image_size=48, patch_size=s.patch_size, hidden=s.vision_hidden,
                layers=s.vision_layers, heads=s.vision_heads)
    make_llm(root / "llm", tok, hidden=s.llm_hidden, layers=s.llm_layers, heads=s.llm_heads, intermediate=s.llm_intermediate)


def variants(root: Path, text: int) -> dict[str, Cell]:
    """The quick start's default grid: its resolutions, and its compressing connectors at its ratio of each grid."""
    grid = builtin_plan()["grid"]
    ratio = grid["compression"][0]
    options = {e["name"]: e.get("options", {}) for e in grid["connectors"] if isinstance(e, dict)}
    tokens = {res: tokens_for_ratio((res // TinySizes.patch_size,) * 2, ratio) for res in grid["resolutions"]}
    cabs = {res: {**options["c_abstractor"], "num_tokens": q} for res, q in tokens.items()}
    out = {}
    for res, q in tokens.items():
        out[f"mlp@{res}"] = Cell(root, "mlp", {}, res, True, text)
        out[f"avgpool@{res}"] = Cell(root, "avgpool", {"num_tokens": q}, res, True, text)
        out[f"c_abstractor@{res}"] = Cell(root, "c_abstractor", cabs[res], res, True, text)
        out[f"c_abstractor@{res}, nn.Conv2d 1x1"] = Cell(root, "c_abstractor", cabs[res], res, True, text, conv=True)
    low = grid["resolutions"][0]
    out[f"mlp@{low}, AdamW loop"] = Cell(root, "mlp", {}, low, False, text)
    out[f"c_abstractor@{low}, AdamW loop"] = Cell(root, "c_abstractor", cabs[low], low, False, text)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--text", type=int, default=61,
                    help="text tokens per sample (the default probe's mean: 61, its role markers one id each)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quickstart_step.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        build_presets(Path(tmp))
        cells = variants(Path(tmp), args.text)
    times: dict[str, list[float]] = {name: [] for name in cells}
    for cell in cells.values():
        cell.step()  # warm-up
    for r in range(args.rounds):
        order = list(cells) if r % 2 == 0 else list(reversed(cells))
        for name in order:
            t = time.perf_counter()
            for _ in range(args.steps):
                cells[name].step()
            times[name].append((time.perf_counter() - t) / args.steps)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {1e3 * statistics.median(v):.1f} ms"
                                                          for n, v in times.items()))
    median = {n: statistics.median(v) for n, v in times.items()}
    vs_mlp = {n: median[n] / median[f"mlp@{n.split('@')[1].split(',')[0]}"] - 1 for n in median if not n.startswith("mlp@")}
    resolutions = builtin_plan()["grid"]["resolutions"]
    low = resolutions[0]
    result = {
        "benchmark": "quick start fine-tuning step (cached tower features, connector + 2-layer Llama, batch 8), "
                     "variants in alternating rounds",
        "text_tokens": args.text, "batch": BATCH,
        "visual_tokens": {n: c.visual for n, c in cells.items()},
        "median_step_ms": {n: round(1e3 * v, 2) for n, v in median.items()},
        "vs_mlp_same_resolution": {n: round(v, 3) for n, v in vs_mlp.items()},
        "fused_adamw_saves_ms": {f"{c}@{low}": round(1e3 * (median[f"{c}@{low}, AdamW loop"] - median[f"{c}@{low}"]), 2)
                                 for c in ("mlp", "c_abstractor")},
        "pointwise_saves_ms": {f"c_abstractor@{res}": round(1e3 * (median[f"c_abstractor@{res}, nn.Conv2d 1x1"]
                                                                  - median[f"c_abstractor@{res}"]), 2)
                               for res in resolutions},
        "rounds": args.rounds, "steps_per_round": args.steps,
        **code_version(), "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
    }
    print(result)
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
