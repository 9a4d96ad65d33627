"""`connectorlab quickstart`: the whole study, both training stages included, on a laptop CPU.

Steps (each skipped when its output already exists, so a re-run resumes):
1. draw the probe; 2. pre-train the small ViT once (shared by every connector, then frozen) and
warm the small LM up on the probe's text (no images); 3. for each resolution x connector, run the
two-stage recipe with the training code of `connectorlab train` and evaluate on the probe's
MMBench-layout test set (circular), with and without the image; 4. write results.csv, figures and
report.md.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..evaluation.benchmarks.mmbench import load_mmbench
from ..evaluation.runner import evaluate
from ..model.config import ModelConfig
from ..model.mllm import MultimodalLM
from ..training.config import StageConfig, TrainConfig
from ..training.run_folder import differences
from ..training.trainer import FeatureCache, make_accelerator, run_stage
from ..utils.io import atomic_write_json
from ..utils.progress import progress_bar
from .generate import TASK_TYPES, ProbeParams, generate
from .presets import TinySizes, make_random_presets
from .vision_pretrain import pretrain_vision

log = logging.getLogger("connectorlab.quickstart")


@dataclass
class CellSpec:
    connector: str
    options: dict[str, Any] = field(default_factory=dict)


DEFAULT_CONNECTORS = [
    CellSpec("linear"),
    CellSpec("mlp"),
    CellSpec("avgpool", {"num_tokens": 9}),
    CellSpec("perceiver", {"num_tokens": 9, "layers": 2, "heads": 4, "dim_head": 16}),
    CellSpec("c_abstractor", {"num_tokens": 9, "hidden": 64, "depth": 1}),
]


@dataclass
class QuickstartConfig:
    out: str = "runs/quickstart"
    seed: int = 0
    probe: ProbeParams = field(default_factory=ProbeParams)
    resolutions: tuple[int, ...] = (48, 64)
    connectors: list[CellSpec] = field(default_factory=lambda: list(DEFAULT_CONNECTORS))
    sizes: TinySizes = field(default_factory=TinySizes)
    vision_steps: int = 800
    warmup_epochs: int = 1
    pretrain: StageConfig = field(default_factory=lambda: StageConfig(lr=1e-3, global_batch=32, micro_batch=32,
                                                                      epochs=1, template="plain"))
    # Small batches: binding the small shape's colour is learnt after a plateau that the noise of a small
    # batch escapes sooner (measured: batch 32 did not leave it within 500 steps, batch 8 did).
    finetune: StageConfig = field(default_factory=lambda: StageConfig(lr=1e-3, global_batch=8, micro_batch=8,
                                                                      epochs=6))
    eval_batch: int = 128
    max_new_tokens: int = 6


def model_config(qc: QuickstartConfig, vision: Path, llm: Path, spec: CellSpec, resolution: int) -> ModelConfig:
    return ModelConfig(vision=str(vision), llm=str(llm), connector=spec.connector, connector_options=dict(spec.options),
                       image_size=resolution, select_layer=-1, template="plain_v1", max_length=512)


def prepare(qc: QuickstartConfig, bar) -> tuple[Path, Path, Path]:
    out = Path(qc.out)
    probe = out / "probe"
    drawn = probe / "probe.json"
    if not drawn.exists() or json.loads(drawn.read_text())["params"] != dataclasses.asdict(qc.probe):
        generate(probe, qc.probe, progress=bar)
    presets = out / "presets"
    vision, llm = presets / "vision", presets / "llm"
    if not (vision / "config.json").exists() or not (llm / "config.json").exists():
        init = make_random_presets(probe, presets / "init", image_size=max(qc.resolutions), sizes=qc.sizes, seed=qc.seed)
        if not (vision / "config.json").exists():
            pretrain_vision(probe, init["vision"], vision, tuple(qc.resolutions), steps=qc.vision_steps, seed=qc.seed,
                            progress=bar)
        if not (llm / "config.json").exists():
            warm_up_llm(qc, probe, Path(init["vision"]), Path(init["llm"]), llm)
    return probe, vision, llm


def warm_up_llm(qc: QuickstartConfig, probe: Path, vision: Path, init_llm: Path, out: Path) -> None:
    """Text-only warm-up on the probe's captions and questions (images removed): the LM learns the
    probe's language and answer format, but nothing it could only learn from an image."""
    records = []
    for name in ("pretrain.json", "finetune.json"):
        for rec in json.loads((probe / name).read_text()):
            conv = [{**t, "value": t["value"].replace("<image>\n", "")} for t in rec["conversations"]]
            records.append({"id": f"text-{rec['id']}-{name}", "conversations": conv})
    data = out.parent / "warmup.json"
    atomic_write_json(data, records)
    cfg = TrainConfig(model=ModelConfig(vision=str(vision), llm=str(init_llm), connector="linear", select_layer=-1,
                                        template="plain_v1", max_length=512),
                      output_dir=str(out.parent / "warmup"), seed=qc.seed, checkpoint_every=10**9,
                      finetune=StageConfig(data=str(data), lr=2e-3, global_batch=64, micro_batch=64,
                                           epochs=qc.warmup_epochs, init_connector="random"))
    run_stage(cfg, "finetune", resume=True)  # a warm-up killed half-way continues from its checkpoint
    (out.parent / "warmup/finetune/model/llm").rename(out)


def run_cell(qc: QuickstartConfig, spec: CellSpec, resolution: int, vision: Path, llm: Path, probe: Path, bench,
             cache: FeatureCache | None, accelerator) -> tuple[dict, FeatureCache | None]:
    cell = Path(qc.out) / "cells" / f"{spec.connector}-{resolution}"
    done = cell / "cell.json"
    if done.exists():
        return json.loads(done.read_text()), cache
    stage = lambda base, data: dataclasses.replace(base, data=str(probe / data))  # noqa: E731
    cfg = TrainConfig(model=model_config(qc, vision, llm, spec, resolution), output_dir=str(cell), seed=qc.seed,
                      checkpoint_every=10**9, keep_checkpoints=1, cache_features=True,
                      pretrain=stage(qc.pretrain, "pretrain.json"), finetune=stage(qc.finetune, "finetune.json"))
    if cache is None:  # one per resolution, shared by every connector (the tower is frozen and identical)
        probe_model = MultimodalLM.build(cfg.model)
        cache = FeatureCache(probe_model.vision, probe_model.image_transform)
    summaries = {name: run_stage(cfg, name, resume=True, accelerator=accelerator, feature_cache=cache).summary
                 for name in ("pretrain", "finetune")}
    model = MultimodalLM.from_pretrained(cell / "finetune/model")
    seen = evaluate(model, bench, cell / "eval", qc.eval_batch, qc.max_new_tokens, show_progress=False,
                    run_info={"model": str(cell / "finetune/model")})
    blind = evaluate(model, bench, cell / "eval_blind", qc.eval_batch, qc.max_new_tokens, blind=True, show_progress=False,
                     run_info={"model": str(cell / "finetune/model")})
    chance: dict[str, list[float]] = {}
    for it in bench.items:  # a consistent guess among k options is right 1/k of the time, in every rotation
        chance.setdefault(TASK_TYPES[it.meta["category"]], []).append(1 / len(it.meta["options"]))
    result = {
        "connector": spec.connector, "options": spec.options, "family": model.connector.family,
        "chance": {t: sum(v) / len(v) for t, v in chance.items()},
        "mechanism": model.connector.mechanism, "resolution": resolution,
        "visual_tokens": model.connector.num_output_tokens, "patch_tokens": model.connector.num_patches,
        "connector_parameters": sum(p.numel() for p in model.connector.parameters()),
        "pretrain_s": summaries["pretrain"]["wall_clock_s"], "finetune_s": summaries["finetune"]["wall_clock_s"],
        "pretrain_loss": [summaries["pretrain"]["first_loss"], summaries["pretrain"]["final_loss"]],
        "finetune_loss": [summaries["finetune"]["first_loss"], summaries["finetune"]["final_loss"]],
        "scores": seen["scores"], "blind": blind["scores"],
    }
    atomic_write_json(done, result)
    return result, cache


def check_same_config(path: Path, qc: QuickstartConfig) -> None:
    """Finished cells are reused on a re-run, so a folder made with other settings would mix two studies."""
    if not path.exists():
        return
    changed = [d for d in differences(json.loads(path.read_text()), dataclasses.asdict(qc)) if not d.startswith("out:")]
    if changed:
        raise ValueError(f"{path.parent} holds a quick start made with other settings ({'; '.join(changed)}); "
                         "use another --out or remove that folder")


def quickstart(qc: QuickstartConfig = QuickstartConfig(), show_progress: bool = True) -> list[dict]:
    from .report import write_report

    torch.manual_seed(qc.seed)
    out = Path(qc.out)
    out.mkdir(parents=True, exist_ok=True)
    check_same_config(out / "quickstart_config.json", qc)
    atomic_write_json(out / "quickstart_config.json", dataclasses.asdict(qc))
    accelerator = make_accelerator()
    cells = []
    with progress_bar(show_progress) as bar:
        probe, vision, llm = prepare(qc, bar)
        bench = load_mmbench(probe / "test.tsv", mapping_section="probe")
        task = bar.add_task("study cells", total=len(qc.resolutions) * len(qc.connectors))
        for resolution in qc.resolutions:
            cache = None
            for spec in qc.connectors:
                bar.update(task, info=f"{spec.connector} @ {resolution}px")
                result, cache = run_cell(qc, spec, resolution, vision, llm, probe, bench, cache, accelerator)
                cells.append(result)
                bar.advance(task)
    write_report(out, cells, qc)
    return cells
