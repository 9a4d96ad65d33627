"""Training time measured side by side, so that "compressing trains faster" compares cells, not moments.

A cell's stage time is measured while it trains, and cells train one after another. On a shared machine the speed
drifts by 10-30 % within minutes: in one quick start every compressing cell fine-tuned 10-26 % longer than `mlp`
only because it ran later. Here the finished cells of one resolution, seed and variant are rebuilt for each stage
and their steps are timed in alternating rounds (A B C, then C B A, ...), so that drift hits them alike, with no other
group or cell running beside them (see `time_cells`). Every round runs the same batches, those of the stage's
median padded length among the batches drawn: a step's cost grows with its batch's length, so with each round on its
own batches each cell's median step fell on different lengths, and the ratio of two cells' medians varied by several
percent from run to run while the per-round ratios agreed (benchmarks/timing_repeatability.py). A cell's time per
step is the median over rounds. The steps run on throwaway copies: nothing a cell saved changes. Every cell of a group
is held in memory at once, which suits the small models of a CPU study.
"""
from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

import torch

from ..data.images import ImageLoader
from ..data.llava import read_records
from ..training.config import STAGES
from ..training.feature_cache import FeatureCache
from ..training.loop import StageRun, micro_step, optimizer_step, supervised_tokens
from ..training.stage_data import load_stage_data
from ..training.trainer import make_accelerator, prepare_stage, stage_artifact, stage_dir
from ..utils.io import atomic_write_json
from .folder import StudyFolder, finetune_config, pretrain_config
from .plan import Cell, StepTiming, StudyPlan
from .pool import run_pool


def timing_groups(cells: list[Cell]) -> list[list[Cell]]:
    """Cells compared with each other (same resolution, seed, variant), in plan order; single cells are not timed."""
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.resolution, cell.seed, cell.variant), []).append(cell)
    return [g for g in groups.values() if len(g) > 1]


def stage_run(cell: Cell, out: Path, stage: str, accelerator, steps: int) -> StageRun:
    """The cell's stage, prepared as for training, on `steps` global batches of records drawn with the cell's seed
    (the same records for every cell of a group): tokenizing the whole file for the steps timed would cost more than
    them."""
    pre = pretrain_config(cell, out)
    cfg = pre if stage == "pretrain" else finetune_config(cell, stage_artifact(stage_dir(pre, "pretrain"), "pretrain"))
    sc = cfg.stage(stage)
    records = read_records(sc.data)
    drawn = random.Random(cfg.seed).sample(records, min(len(records), steps * sc.global_batch))
    return prepare_stage(cfg, stage, accelerator, load_stage_data(cfg, stage, accelerator, records=drawn), resume=False)


class TimedStage:
    """`steps` optimizer steps of one cell's stage, the same ones every round: of the stage's first `rounds` x `steps`
    batches (its first steps again where it has fewer), the `steps` of median padded length (`typical_batches`)."""

    def __init__(self, run: StageRun, steps: int, rounds: int = 1):
        samples = run.data.samples
        drawn = [run.plan(step)[1:] for step in range(min(steps * max(rounds, 1), run.total))]
        self.run, self.batches = run, typical_batches(drawn, [len(s.input_ids) for s in samples], steps)
        paths = [samples[i].image for g, _ in self.batches for i in g if samples[i].image is not None]
        inner = run.inner
        self.cache = FeatureCache(inner.vision, inner.image_transform, paths, workers=run.sc.image_workers) \
            if run.cfg.cache_features and inner.vision.frozen else None
        per_sample = supervised_tokens(samples)
        self.supervised = [sum(per_sample[i] for i in g) for g, _ in self.batches]
        self.scaler = torch.amp.GradScaler(run.accelerator.device.type) if run.cfg.fp16 else None
        self.pixels = None  # without cached features: each micro-batch's images, decoded once, before any timing
        if self.cache is None:
            with ImageLoader(inner.image_transform, run.sc.image_workers) as loader:
                self.pixels = [[loader.load([samples[i].image for i in idx if samples[i].image is not None])
                                for idx in micro] for _, micro in self.batches]
        run.model.train()

    def seconds_per_step(self) -> float:
        device = self.run.accelerator.device
        synchronize(device)
        t0 = time.perf_counter()
        for step, (_, micro) in enumerate(self.batches):
            for j, idx in enumerate(micro):
                pixels = None if self.pixels is None else iter([self.pixels[step][j]])
                micro_step(self.run, idx, self.cache, pixels, self.run.accelerator.num_processes / self.supervised[step],
                           j == len(micro) - 1, self.scaler)
            optimizer_step(self.run, self.scaler)
        synchronize(device)
        return (time.perf_counter() - t0) / len(self.batches)


def typical_batches(batches: list[tuple], lengths: list[int], count: int) -> list[tuple]:
    """The `count` batches (global batch indices, micro-batches) at the middle of all `batches` ordered by padded
    length (their longest sample's; equal lengths in drawn order), returned in drawn order."""
    padded = [max(lengths[i] for i in g) for g, _ in batches]
    order = sorted(range(len(batches)), key=lambda j: (padded[j], j))
    start = max(0, (len(order) - count) // 2)
    return [batches[j] for j in sorted(order[start:start + count])]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_group(cells: list[Cell], out: Path, timing: StepTiming) -> dict[str, dict]:
    """Per cell, per stage, the seconds per step of each round; cells alternate within a round and reverse their order
    from one round to the next."""
    accelerator = make_accelerator()
    result = {c.label: {"cell_id": c.cell_id} for c in cells}
    for stage in STAGES:
        timed = {c.label: TimedStage(stage_run(c, out, stage, accelerator, timing.steps * timing.rounds),
                                     timing.steps, timing.rounds) for c in cells}
        for t in timed.values():
            t.seconds_per_step()  # warm-up: first-call allocations and kernel choices
        rounds: dict[str, list[float]] = {label: [] for label in timed}
        for r in range(timing.rounds):
            for label in (list(timed) if r % 2 == 0 else list(reversed(timed))):
                rounds[label].append(timed[label].seconds_per_step())
        for label, values in rounds.items():
            result[label][stage] = values
        del timed
        accelerator.free_memory()  # the prepared models of this stage
    return result


def time_cells(plan: StudyPlan, cells: list[Cell], out: Path, workers: int, threads: int | None, bar) -> list[str]:
    """The plan's paired timing of every group of finished cells not yet timed, after every cell has finished, one
    group at a time; returns one line per group that failed (the report then falls back on the stage times of its
    cells). With several workers the groups run in one fresh worker process, not in the workers that trained the
    cells, since a process's past work changes what a step costs. Measured on the quick start's seed-0 folder (40
    rounds), c_abstractor-4x's fine-tuning step at 32 px against mlp's: 0.961 in a fresh process, 0.997 in the same
    process after it had allocated and freed 200,000 tensors of random sizes; in the cell workers of seven quick start
    runs 0.97-1.02, in eight fresh processes 0.91-1.00 (benchmarks/timing_repeatability.py). Timed beside another
    group it read 0.998, alone 0.95-0.98 (24 rounds)."""
    groups = pending_groups(cells, out, plan.timing)
    if not groups:
        return []
    task = bar.add_task("paired step timing", total=len(groups))
    failed: list[str] = []

    def done(job, args, found) -> None:
        record(out, plan.timing, found)
        bar.advance(task)

    def error(job, args, err) -> None:
        failed.append(f"{', '.join(c.label for c in args[0])}: {type(err).__name__}: {err}")
        bar.advance(task)

    jobs = [(time_group, (g, out, plan.timing)) for g in groups]
    if workers > 1:
        run_pool(jobs, 1, threads, done, error, folder=out)
    else:
        for job, args in jobs:
            try:
                done(job, args, job(*args))
            except Exception as err:  # noqa: BLE001 - one group's failure leaves the others' timings and the study
                error(job, args, err)
    return failed


def read_timing(out: str | Path) -> dict[str, dict]:
    path = StudyFolder(out).timing_path
    return json.loads(path.read_text())["cells"] if path.exists() else {}


def timed_before(out: Path, timing: StepTiming) -> dict[str, dict]:
    """The saved timings made with these settings (another round or step count is not comparable: timed again)."""
    path = StudyFolder(out).timing_path
    saved = json.loads(path.read_text()) if path.exists() else {}
    return saved.get("cells", {}) if (saved.get("rounds"), saved.get("steps")) == (timing.rounds, timing.steps) else {}


def pending_groups(cells: list[Cell], out: Path, timing: StepTiming) -> list[list[Cell]]:
    """Groups whose timing is missing or was made for other cells or settings (a re-run resumes here)."""
    known = timed_before(out, timing)
    return [g for g in timing_groups(cells) if any(known.get(c.label, {}).get("cell_id") != c.cell_id for c in g)]


def record(out: Path, timing: StepTiming, found: dict[str, dict]) -> None:
    """Merged into the study's timing file (atomically), keeping the groups timed before with the same settings."""
    atomic_write_json(StudyFolder(out).timing_path, {"rounds": timing.rounds, "steps": timing.steps,
                                                     "statistic": "median over rounds",
                                                     "cells": {**timed_before(out, timing), **found}})


def median_ms(entry: dict, stage: str) -> float | None:
    values = entry.get(stage)
    return 1000 * statistics.median(values) if values else None
