"""The step loop of a stage: micro-batches (forward, backward, gradient sync on the last one), the optimizer step, the
step log with throughput and MFU, and the periodic checkpoint. What it steps is a `StageRun`, made by the trainer."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator

from ..data.batching import StepPlan, collate
from ..data.images import ImageLoader
from ..errors import TrainingDiverged
from ..language.processor import IGNORE_INDEX, IMAGE_TOKEN_ID
from ..model.mllm import MultimodalLM
from . import zero
from .checkpoint import save_checkpoint
from .config import StageConfig, TrainConfig
from .feature_cache import FeatureCache
from .metrics import StepLog, peak_memory_mb
from .sharding import set_gradient_sync
from .stage_data import StageData
from .throughput import FlopModel, device_peak_flops


@dataclass
class StageRun:
    """A stage ready to step: made by `prepare_stage`, stepped by `train_steps`, closed by `finish_stage`."""

    cfg: TrainConfig
    stage: str
    accelerator: Accelerator
    out: Path
    data: StageData
    model: torch.nn.Module  # as prepared by Accelerate (DDP-wrapped where it applies)
    inner: MultimodalLM
    optimizer: torch.optim.Optimizer
    scheduler: object
    params: list[torch.nn.Parameter]
    plan: StepPlan
    total: int
    accum: int
    start: int = 0
    elapsed_before: float = 0.0
    resumed_from: str | None = None
    resharded_from: int | None = None  # an FSDP checkpoint written by another number of processes
    memory_before_mb: float = 0.0  # this process's memory before the stage built its model

    @property
    def sc(self) -> StageConfig:
        return self.cfg.stage(self.stage)

    @property
    def fsdp(self) -> bool:
        return self.cfg.sharding == "fsdp"

    @property
    def zero(self) -> bool:
        """DeepSpeed ZeRO: `model` is its engine, which reduces, clips and steps."""
        return zero.is_zero(self.cfg.sharding)


def mixed_precision(cfg: TrainConfig, device: torch.device):
    if cfg.bf16 or cfg.fp16:
        return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.bf16 else torch.float16)
    return contextlib.nullcontext()


@dataclass
class StepTotals:
    """What the step loop measured, for the summary."""

    wall_s: float
    cache_s: float
    cached: bool
    flops: float  # model FLOPs of the steps run in this process's session (not of resumed ones)
    tokens: int
    steps: int


def supervised_tokens(samples) -> list[int]:
    """Per sample, the labels a loss is taken on (the first position predicts nothing): a step's loss is divided by
    its global batch's total, so that gradient accumulation and process count never change it."""
    return [sum(label != IGNORE_INDEX for label in s.labels[1:]) for s in samples]


def train_steps(run: StageRun, steplog: StepLog | None, feature_cache: FeatureCache | None, bar) -> StepTotals:
    """The optimizer steps from `run.start` to `run.total`, a checkpoint every `checkpoint_every` and at the end."""
    cfg, sc, accelerator, inner = run.cfg, run.sc, run.accelerator, run.inner
    samples, device, world = run.data.samples, accelerator.device, accelerator.num_processes
    supervised = supervised_tokens(samples)
    text_tokens = [s.length - s.input_ids.count(IMAGE_TOKEN_ID) for s in samples]  # counted once, logged every step
    has_image = [s.image is not None for s in samples]
    q = inner.connector.num_output_tokens
    scaler = torch.amp.GradScaler(device.type) if cfg.fp16 else None
    run.model.train()
    with ImageLoader(inner.image_transform, sc.image_workers) as loader:
        t_cache = time.perf_counter()
        cache = stage_feature_cache(run, feature_cache, bar)
        cache_s = time.perf_counter() - t_cache
        flop_model = FlopModel.for_model(inner, connector_forward_flops(cfg), cached=cache is not None)
        peak = device_peak_flops(device, cfg.peak_tflops)
        t_stage = time.perf_counter()  # training time excludes feature caching (reported apart)
        task = bar.add_task(run.stage, total=run.total, completed=run.start, info="")
        # Each micro-batch's images, decoded while the micro-batch before it trains (none with cached features).
        pixel_stream = None if cache is not None else loader.stream(
            [samples[i].image for i in idx if samples[i].image is not None]
            for step in range(run.start, run.total) for idx in run.plan(step)[2])
        flops_done, tokens_done = 0.0, 0
        last_good = run.resumed_from
        for step in range(run.start, run.total):
            t0 = time.perf_counter()
            epoch, gbatch, micro = run.plan(step)
            global_sup = sum(supervised[i] for i in gbatch)
            loss_sum = torch.zeros((), device=device)
            for j, idx in enumerate(micro):
                loss_sum += micro_step(run, idx, cache, pixel_stream, world / global_sup, j == len(micro) - 1, scaler)
            loss = (accelerator.reduce(loss_sum, "sum") / global_sup).item()  # the same on every process
            if not math.isfinite(loss) and not cfg.allow_nonfinite:  # before the step: the weights stay finite
                raise TrainingDiverged(f"{run.stage}: the loss is {loss} at step {step + 1}; last good checkpoint: "
                                       f"{last_good or 'none'} (resume from it with --resume after lowering the "
                                       "learning rate or fixing the data, or set allow_nonfinite: true to go on)")
            grad_norm = optimizer_step(run, scaler)
            dt = time.perf_counter() - t0
            n_img = sum(has_image[i] for i in gbatch)
            n_tokens = sum(text_tokens[i] for i in gbatch) + n_img * q
            step_flops = flop_model.step(n_tokens, global_sup, n_img)
            flops_done, tokens_done = flops_done + step_flops, tokens_done + n_tokens
            if steplog and ((step + 1) % cfg.log_every == 0 or step + 1 == run.total):
                steplog.write({"step": step + 1, "epoch": epoch, "loss": loss, "lr": run.scheduler.get_last_lr()[0],
                               "grad_norm": None if grad_norm is None else float(grad_norm), "step_time_s": dt,
                               "samples_per_s": len(gbatch) / dt, "tokens_per_s": n_tokens / dt,
                               "visual_tokens_per_s": n_img * q / dt, "text_tokens_per_s": (n_tokens - n_img * q) / dt,
                               "model_tflops_per_s": step_flops / dt / 1e12,
                               "mfu": step_flops / dt / (peak * world) if peak else None,
                               "peak_memory_mb": peak_memory_mb(device)})
            bar.update(task, advance=1, info=f"loss {loss:.4f}")
            done = step + 1
            if done % cfg.checkpoint_every == 0 or done == run.total:
                elapsed = run.elapsed_before + time.perf_counter() - t_stage
                last_good = save_checkpoint(accelerator, run.out / "checkpoints", done, run.model, run.optimizer,
                                            run.scheduler, {"stage": run.stage, "elapsed_s": elapsed,
                                                            "samples": done * sc.global_batch},
                                            cfg.keep_checkpoints, sharding=cfg.sharding)
    wall = run.elapsed_before + time.perf_counter() - t_stage
    return StepTotals(wall, cache_s, cache is not None, flops_done, tokens_done, run.total - run.start)


def stage_feature_cache(run: StageRun, shared: FeatureCache | None, bar) -> FeatureCache | None:
    """The frozen tower's features of this stage's images: from a cache a study shares when it fits this tower."""
    inner = run.inner
    if not (run.cfg.cache_features and inner.vision.frozen):
        return None
    paths = [s.image for s in run.data.samples if s.image is not None]
    if shared is not None and shared.compatible(inner):
        shared.add(paths, progress=bar)
        return shared
    return FeatureCache(inner.vision, inner.image_transform, paths, progress=bar, workers=run.sc.image_workers)


def micro_step(run: StageRun, idx: list[int], cache, pixel_stream, scale: float, last: bool, scaler) -> torch.Tensor:
    """Forward and backward of one micro-batch; gradients are synchronised across processes on the last one only."""
    samples, device, accelerator = run.data.samples, run.accelerator.device, run.accelerator
    batch = collate([samples[i] for i in idx], run.data.processor.pad_id)
    paths = [samples[idx[i]].image for i in batch.image_index]
    pixels = next(pixel_stream) if pixel_stream is not None else None  # one per micro-batch, in order
    kwargs = {}
    if paths and cache is not None:
        feats, levels = cache.get(paths)
        kwargs["vision_features"] = (feats.to(device), None if levels is None else levels.to(device))
    elif paths:
        kwargs["pixel_values"] = pixels.to(device)
    if run.fsdp:
        set_gradient_sync(run.model, last)
        sync = contextlib.nullcontext()
    elif run.zero:
        sync = contextlib.nullcontext()  # the engine reduces on the micro-batch marked last
    else:
        sync = contextlib.nullcontext() if last else accelerator.no_sync(run.model)
    with sync, mixed_precision(run.cfg, device):
        result = run.model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                           labels=batch.labels.to(device), reduction="sum", **kwargs)
        loss = result.loss * scale
        if run.zero:
            zero.backward(run.model, loss, last)
        else:
            accelerator.backward(scaler.scale(loss) if scaler is not None else loss)
    return result.loss.detach().float()


def optimizer_step(run: StageRun, scaler) -> torch.Tensor | float | None:
    if run.zero:
        grad_norm = zero.step(run.model)
        run.scheduler.step()
        return grad_norm
    if scaler is not None:
        scaler.unscale_(run.optimizer)
    max_norm = run.sc.max_grad_norm
    grad_norm = run.accelerator.clip_grad_norm_(run.params, max_norm) if max_norm else None
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor holding the global norm
        grad_norm = grad_norm.full_tensor()
    if scaler is not None:
        scaler.step(run.optimizer)
        scaler.update()
    else:
        run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def connector_forward_flops(cfg: TrainConfig) -> float:
    """The connector's forward FLOPs per image, counted on the meta device (the zoo's own counter)."""
    from ..connectors.describe import describe
    from ..model.shape import ModelShape

    shape = ModelShape.read(cfg.model)
    return describe(cfg.model.connector, shape.vision_dim, shape.llm_dim, shape.grid(cfg.model),
                    **cfg.model.connector_options)["flops"]
