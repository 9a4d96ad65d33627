"""`study plan --estimate`: every cell's stages costed (see `estimate`) with the plan's workload, and the grid's total.

The workload of a stage is the plan's `estimate` block where it gives one; otherwise it is measured from the stage's
data on this machine (its record count, and the mean text and answer tokens of its first records under the LM's own
tokenizer; the chat template's few tokens per turn are left out)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..language.templates import without_image
from ..model.config import ModelConfig
from ..model.shape import ModelShape
from ..training.config import STAGES
from .estimate import Sizes, StageCost, Workload, gpu_hours, peak_flops, stage_cost
from .folder import CellSize
from .plan import Cell, StudyPlan

MEASURED_RECORDS = 1000  # records tokenized to measure a stage's mean lengths


@dataclass
class CellCost:
    label: str
    pretrain_key: str  # cells that share it share one stage-1 run, counted once in the total
    stages: dict[str, StageCost]


def workload(plan: StudyPlan, cell: Cell, stage: str) -> Workload:
    given = dict((plan.estimate or {}).get(stage) or {})
    keys = ("text_tokens", "supervised_tokens", "samples")
    if all(k in given for k in keys):
        return Workload(float(given["text_tokens"]), float(given["supervised_tokens"]), int(given["samples"]))
    data = Path(cell.config.stage(stage).data or "")
    if not data.is_file():
        missing = [k for k in keys if k not in given]
        raise ConfigError(f"--estimate: {stage}'s data {str(data) or '(none)'} is not on this machine; give "
                          f"estimate.{stage}.{{{', '.join(missing)}}} in the plan")
    measured = measure(data, cell.config.model)
    return Workload(float(given.get("text_tokens", measured.text_tokens)),
                    float(given.get("supervised_tokens", measured.supervised_tokens)),
                    int(given.get("samples", measured.samples)))


def measure(data: Path, model: ModelConfig) -> Workload:
    """Mean text and answer tokens of the first records (LLaVA's conversation format), and the record count."""
    from ..data.llava import read_records
    from ..language.tokenizer import load_tokenizer

    records = read_records(data)
    tokenizer = load_tokenizer(model.llm)
    text = answer = 0
    sample = records[:MEASURED_RECORDS]
    for record in sample:
        for turn in record.get("conversations", []):
            n = len(tokenizer(without_image(str(turn.get("value", ""))), add_special_tokens=False).input_ids)
            text += n + 1  # the turn's separator
            answer += n + 1 if turn.get("from") == "gpt" else 0
    return Workload(text / max(1, len(sample)), answer / max(1, len(sample)), len(records))


def cell_costs(plan: StudyPlan, cells: list[Cell], rows: list[CellSize], processes: int, on_gpu: bool = True) -> list[CellCost]:
    """`rows` are `describe_cells`' (visual tokens, connector parameters and FLOPs of each cell)."""
    out, works = [], {}
    for cell, row in zip(cells, rows, strict=True):
        model: ModelConfig = cell.config.model
        shape = plan.shape or ModelShape.read(model)
        sizes = Sizes.of(shape, shape.grid(model), row.parameters)
        stages = {}
        for stage in STAGES:
            key = (stage, cell.config.stage(stage).data)
            if key not in works:
                works[key] = workload(plan, cell, stage)
            stages[stage] = stage_cost(cell.config, stage, sizes, row.flops, row.visual_tokens, processes,
                                       works[key], on_gpu)
        out.append(CellCost(cell.label, cell.pretrain_key, stages))
    return out


@dataclass
class GridTotal:
    gpu_hours: float
    wall_hours: float
    unfit: list[str]  # cell/stage that fit no engine


def stage_hours(sc: StageCost, gpu: str, mfu: float) -> float | None:
    """GPU-hours of a stage under the engine it is recommended (None when none fits)."""
    choice = sc.recommend(peak_flops(gpu)[0])
    if choice is None:
        return None
    return gpu_hours((sc.gc_flops_per_sample if choice[1] else sc.flops_per_sample) * sc.samples, gpu, mfu)


def total(costs: list[CellCost], gpu: str, gpus: int, mfu: float) -> GridTotal:
    hours, unfit, seen = 0.0, [], set()
    for cost in costs:
        for stage, sc in cost.stages.items():
            if stage == "pretrain" and cost.pretrain_key in seen:
                continue
            seen.add(cost.pretrain_key) if stage == "pretrain" else None
            h = stage_hours(sc, gpu, mfu)
            if h is None:
                unfit.append(f"{cost.label} {stage}")
            else:
                hours += h
    return GridTotal(hours, hours / gpus, unfit)
