"""LLaVA's two-stage recipe on one CPU or many GPUs through Accelerate.

Stage `pretrain` trains the connector alone; `finetune` trains connector + LM (optionally LoRA,
optionally the tower) from the pre-trained connector. Gradients are normalised by the number of
supervised tokens in the whole global batch, so any split over processes and micro-batches gives
the same update (up to float summation order).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, gather_object, set_seed
from transformers import AutoTokenizer, get_cosine_schedule_with_warmup

from ..data.batching import StepPlan, accumulation_steps, collate
from ..data.images import ImageLoader, find_undecodable
from ..data.llava import Sample, load_samples
from ..data.skips import SkipReport
from ..language.processor import IGNORE_INDEX, IMAGE_TOKEN_ID, MultimodalProcessor
from ..model.mllm import MultimodalLM
from ..model.shape import meta_connector
from ..utils.distributed import main_process_lock
from ..utils.io import atomic_write_json
from ..utils.progress import progress_bar
from ..utils.validation import ConfigError
from .checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from .config import STAGES, StageConfig, TrainConfig
from .metrics import StepLog, peak_memory_mb
from .run_folder import check_stage_folder, record_stage_config

log = logging.getLogger("connectorlab.train")


def make_accelerator() -> Accelerator:
    # Text-only batches leave the connector unused; DDP must tolerate that. Without a GPU, `cpu=True`
    # lets a multi-process launch (`accelerate launch --multi_gpu`, torchrun) use gloo on the CPU.
    return Accelerator(cpu=not torch.cuda.is_available(),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def stage_dir(cfg: TrainConfig, stage: str) -> Path:
    return Path(cfg.output_dir) / stage


def build_stage_model(cfg: TrainConfig, stage: str, sc: StageConfig) -> MultimodalLM:
    set_seed(cfg.seed)  # identical connector initialisation on every process
    model = MultimodalLM.build(cfg.model)
    if stage == "pretrain":
        model.set_trainable(vision=False, connector=True, llm=False)
        return model
    init = Path(sc.init_connector) if sc.init_connector else stage_dir(cfg, "pretrain") / "connector.safetensors"
    if sc.init_connector == "random":
        pass  # an explicit choice (e.g. a text-only LM warm-up), not a missing file
    elif init.exists():
        model.load_connector(init)
    elif sc.init_connector:
        raise FileNotFoundError(f"finetune.init_connector {init} does not exist")
    else:
        log.warning("no pre-trained connector at %s; fine-tuning starts from a random connector", init)
    model.set_trainable(vision=sc.train_vision, connector=True, llm=sc.lora is None)
    if sc.lora is not None:
        from peft import LoraConfig, get_peft_model

        model.llm = get_peft_model(model.llm, LoraConfig(r=sc.lora.r, lora_alpha=sc.lora.alpha, lora_dropout=sc.lora.dropout,
                                                         target_modules=sc.lora.target_modules, task_type="CAUSAL_LM"))
    return model


@dataclass
class StageResult:
    """What a finished stage hands on: its folder, its summary and what it made (the pre-trained connector, or the
    final model folder), so that callers read results without knowing the folder layout."""

    stage: str
    folder: Path
    summary: dict
    artifact: Path

    @property
    def wall_clock_s(self) -> float:
        return self.summary["wall_clock_s"]


def stage_artifact(folder: Path, stage: str) -> Path:
    return folder / ("connector.safetensors" if stage == "pretrain" else "model")


def finished_stage(cfg: TrainConfig, stage: str) -> StageResult:
    """The result of a stage that another process (e.g. `accelerate launch`) finished."""
    folder = stage_dir(cfg, stage)
    summary = folder / "summary.json"
    if not summary.exists():
        raise FileNotFoundError(f"{folder}: the {stage} stage has not finished (no summary.json)")
    return StageResult(stage, folder, json.loads(summary.read_text()), stage_artifact(folder, stage))


@dataclass
class StageData:
    """A stage's records, validated and tokenized before any stage trains."""

    processor: MultimodalProcessor
    samples: list[Sample]
    report: SkipReport


def load_stage_data(cfg: TrainConfig, stage: str, accelerator: Accelerator, tokenizer=None,
                    num_tokens: int | None = None) -> StageData:
    sc = cfg.stage(stage)
    if not sc.data:
        raise ConfigError(f"{stage}.data is not set")
    tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(cfg.model.llm)
    num_tokens = num_tokens if num_tokens is not None else meta_connector(cfg.model).num_output_tokens
    processor = MultimodalProcessor(tokenizer, sc.template or cfg.model.template, num_tokens, cfg.model.max_length)
    report = SkipReport(strict=cfg.strict)
    samples = load_samples(sc.data, sc.image_folder, processor, report)
    if cfg.check_images:
        samples = drop_undecodable(samples, report, accelerator, sc.image_workers, sc.data)
    if accelerator.is_main_process:
        log.info("%s: %d usable records from %s; %s", stage, len(samples), sc.data, report.summary())
    return StageData(processor, samples, report)


def drop_undecodable(samples: list[Sample], report: SkipReport, accelerator: Accelerator, workers: int,
                     source: str) -> list[Sample]:
    """Decode every image once, each process a slice, and skip the ones that fail on every process alike (a
    truncated file passes the header check and would otherwise crash the stage, and every resume, at its step)."""
    paths = sorted({s.image for s in samples if s.image is not None})
    mine = paths[accelerator.process_index::accelerator.num_processes]
    bad_here = sorted((str(p), why) for p, why in find_undecodable(mine, workers).items())
    bad = dict(gather_object(bad_here) if accelerator.num_processes > 1 else bad_here)
    if not bad:
        return samples
    kept = []
    for s in samples:
        if s.image is not None and str(s.image) in bad:
            report.skip("unreadable_image", s.id, f"field 'image': {s.image}: {bad[str(s.image)]}", source)
        else:
            kept.append(s)
    return kept


class FeatureCache:
    """Frozen-tower features computed once (keyed by image path); a study may share one across runs
    that use the same frozen tower at the same resolution."""

    def __init__(self, vision, transform, paths: list[Path] = (), chunk: int = 16, progress=None, workers: int = 4):
        self.vision, self.transform, self.chunk, self.workers = vision, transform, chunk, workers
        self.store: dict[Path, tuple] = {}
        self.add(paths, progress)

    @classmethod
    def for_model(cls, config, workers: int = 4) -> FeatureCache:
        """An empty cache with the frozen tower of `config` (a ModelConfig), filled by the stages that use it."""
        from ..model.mllm import build_vision, image_transform_for

        vision = build_vision(config)
        return cls(vision, image_transform_for(config, vision), workers=workers)

    def compatible(self, model: MultimodalLM) -> bool:
        a, b = model.vision, self.vision
        return (a.image_size, a.select_layer, a.level_layers) == (b.image_size, b.select_layer, b.level_layers) \
            and len(sa := a.model.state_dict()) == len(sb := b.model.state_dict()) \
            and all(torch.equal(x, y) for x, y in zip(sa.values(), sb.values(), strict=True))

    def add(self, paths: list[Path], progress=None) -> None:
        unique = sorted(set(paths) - set(self.store))
        task = progress.add_task("caching features", total=len(unique)) if progress and unique else None
        device = next(self.vision.parameters()).device
        parts = [unique[i:i + self.chunk] for i in range(0, len(unique), self.chunk)]
        with torch.no_grad(), ImageLoader(self.transform, self.workers) as loader:
            for part, pixels in zip(parts, loader.stream(parts), strict=True):
                feats, levels = self.vision(pixels.to(device))
                for j, p in enumerate(part):
                    self.store[p] = (feats[j].cpu(), None if levels is None else levels[j].cpu())
                if task is not None:
                    progress.advance(task, len(part))

    def get(self, paths: list[Path]):
        feats = torch.stack([self.store[p][0] for p in paths])
        levels = None if self.store[paths[0]][1] is None else torch.stack([self.store[p][1] for p in paths])
        return feats, levels


def run_stage(cfg: TrainConfig, stage: str, resume: bool = False, accelerator: Accelerator | None = None,
              feature_cache: FeatureCache | None = None, data: StageData | None = None,
              overwrite: bool = False) -> StageResult:
    accelerator = accelerator or make_accelerator()
    sc = cfg.stage(stage)
    out = stage_dir(cfg, stage)
    summary_path = out / "summary.json"
    main = accelerator.is_main_process
    check_stage_folder(cfg, stage, resume, overwrite, will_run=True, clear=main)
    accelerator.wait_for_everyone()
    if resume and summary_path.exists():
        log.info("%s already finished (%s); skipping", stage, summary_path)
        return StageResult(stage, out, json.loads(summary_path.read_text()), stage_artifact(out, stage))
    if main:
        record_stage_config(cfg, stage)
    data = data or load_stage_data(cfg, stage, accelerator)
    processor, samples, report = data.processor, data.samples, data.report
    model = build_stage_model(cfg, stage, sc)
    world, rank = accelerator.num_processes, accelerator.process_index
    accum = accumulation_steps(sc.global_batch, world, sc.micro_batch)
    lengths = [s.length for s in samples]
    has_image = [s.image is not None for s in samples]
    plan = StepPlan(lengths, has_image, sc.global_batch, cfg.seed, sc.group_by_length, world, rank, sc.micro_batch)
    steps_per_epoch = plan.steps_per_epoch
    if steps_per_epoch == 0:
        raise ValueError(f"{stage}: {len(samples)} usable records cannot fill one global batch of {sc.global_batch}")
    total = steps_per_epoch * sc.epochs if sc.max_steps is None else min(sc.max_steps, steps_per_epoch * sc.epochs)
    supervised = [sum(label != IGNORE_INDEX for label in s.labels[1:]) for s in samples]
    text_tokens = [s.length - s.input_ids.count(IMAGE_TOKEN_ID) for s in samples]  # counted once, logged every step

    ds = accelerator.state.deepspeed_plugin
    if ds is not None:  # DeepSpeed steps its optimizer inside every backward, so it cannot accumulate for us
        if accum != 1:
            raise ValueError(f"with DeepSpeed, set micro_batch = global_batch / processes "
                             f"({sc.global_batch} / {world}); accumulation would step the optimizer every micro-batch")
        ds.deepspeed_config["train_micro_batch_size_per_gpu"] = sc.micro_batch
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    connector_ids = {id(p) for p in model.connector.parameters()}
    groups = [{"params": [p for p in params if id(p) in connector_ids], "lr": sc.connector_lr or sc.lr},
              {"params": [p for p in params if id(p) not in connector_ids], "lr": sc.lr}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=sc.lr, weight_decay=sc.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(sc.warmup_ratio * total), total)
    model, optimizer = accelerator.prepare(model, optimizer)
    inner: MultimodalLM = accelerator.unwrap_model(model)
    device = accelerator.device

    ckpt_dir = out / "checkpoints"
    start, elapsed_before, resumed_from = 0, 0.0, None
    if resume and list_checkpoints(ckpt_dir):
        latest = list_checkpoints(ckpt_dir)[-1]
        state = load_checkpoint(accelerator, latest, model, optimizer, scheduler)
        start, elapsed_before, resumed_from = state["step"], state["elapsed_s"], str(latest)
        if main:
            log.info("%s: resumed from %s (step %d)", stage, latest, start)
    else:
        set_seed(cfg.seed + 1000 * (1 + STAGES.index(stage)) + rank)
    steplog = StepLog(out / "log.jsonl", start if resumed_from else None) if main else None

    q = inner.connector.num_output_tokens
    bar = progress_bar(main)
    cache = None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.bf16 else contextlib.nullcontext()
    model.train()
    with bar, ImageLoader(inner.image_transform, sc.image_workers) as loader:
        t_cache = time.perf_counter()
        if cfg.cache_features and inner.vision.frozen:
            image_paths = [s.image for s in samples if s.image is not None]
            if feature_cache is not None and feature_cache.compatible(inner):
                cache = feature_cache
                cache.add(image_paths, progress=bar)
            else:
                cache = FeatureCache(inner.vision, inner.image_transform, image_paths, progress=bar,
                                     workers=sc.image_workers)
        cache_s = time.perf_counter() - t_cache
        t_stage = time.perf_counter()  # training time excludes feature caching (reported apart)
        task = bar.add_task(stage, total=total, completed=start, info="")
        # Each micro-batch's images, decoded while the micro-batch before it trains (none with cached features).
        pixel_stream = None if cache is not None else loader.stream(
            [samples[i].image for i in idx if samples[i].image is not None]
            for step in range(start, total) for idx in plan(step)[2])
        for step in range(start, total):
            t0 = time.perf_counter()
            epoch, gbatch, micro = plan(step)
            global_sup = sum(supervised[i] for i in gbatch)
            loss_sum = torch.zeros((), device=device)
            for j, idx in enumerate(micro):
                batch = collate([samples[i] for i in idx], processor.pad_id)
                paths = [samples[idx[i]].image for i in batch.image_index]
                pixels = next(pixel_stream) if pixel_stream is not None else None  # one per micro-batch, in order
                kwargs = {}
                if paths and cache is not None:
                    feats, levels = cache.get(paths)
                    kwargs["vision_features"] = (feats.to(device), None if levels is None else levels.to(device))
                elif paths:
                    kwargs["pixel_values"] = pixels.to(device)
                sync = contextlib.nullcontext() if j == len(micro) - 1 else accelerator.no_sync(model)
                with sync, autocast:
                    result = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                                   labels=batch.labels.to(device), reduction="sum", **kwargs)
                    accelerator.backward(result.loss * world / global_sup)
                loss_sum += result.loss.detach().float()
            grad_norm = accelerator.clip_grad_norm_(params, sc.max_grad_norm) if sc.max_grad_norm else None
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss = (accelerator.reduce(loss_sum, "sum") / global_sup).item()
            dt = time.perf_counter() - t0
            n_img = sum(has_image[i] for i in gbatch)
            n_text = sum(text_tokens[i] for i in gbatch)
            if main and ((step + 1) % cfg.log_every == 0 or step + 1 == total):
                row = {"step": step + 1, "epoch": epoch, "loss": loss, "lr": scheduler.get_last_lr()[0],
                       "grad_norm": None if grad_norm is None else float(grad_norm), "step_time_s": dt,
                       "samples_per_s": len(gbatch) / dt, "visual_tokens_per_s": n_img * q / dt,
                       "text_tokens_per_s": n_text / dt}
                if steplog:
                    steplog.write(row)
            bar.update(task, advance=1, info=f"loss {loss:.4f}")
            done = step + 1
            if done % cfg.checkpoint_every == 0 or done == total:
                elapsed = elapsed_before + time.perf_counter() - t_stage
                save_checkpoint(accelerator, ckpt_dir, done, model, optimizer, scheduler,
                                {"stage": stage, "elapsed_s": elapsed, "samples": done * sc.global_batch},
                                cfg.keep_checkpoints)
    wall = elapsed_before + time.perf_counter() - t_stage
    summary = {
        "stage": stage, "wall_clock_s": wall, "steps": total, "samples": total * sc.global_batch,
        "records": {"usable": len(samples), "dropped_tail_per_epoch": len(samples) - steps_per_epoch * sc.global_batch},
        "skipped": report.to_dict(), "global_batch": sc.global_batch, "micro_batch": sc.micro_batch,
        "gradient_accumulation": accum, "processes": world, "trainable_parameters": n_trainable,
        "visual_tokens_per_image": q, "connector": cfg.model.connector, "connector_options": cfg.model.connector_options,
        "image_size": inner.vision.image_size, "peak_memory_mb": peak_memory_mb(device),
        "final_loss": steplog.losses[-1] if steplog and steplog.losses else None,
        "first_loss": steplog.losses[0] if steplog and steplog.losses else None,
        "resumed_from": resumed_from, "feature_cache": cache is not None, "feature_cache_s": cache_s, "bf16": cfg.bf16,
    }
    artifact = stage_artifact(out, stage)
    if main:
        if stage == "pretrain":
            inner.save_connector(artifact)
        else:
            inner.save_pretrained(artifact, source_config=cfg.model)
        atomic_write_json(summary_path, summary)
        log.info("%s done in %.1fs: %s", stage, wall, summary_path)
    accelerator.wait_for_everyone()
    return StageResult(stage, out, summary, artifact)


def train(cfg: TrainConfig, stages: list[str], resume: bool = False, accelerator: Accelerator | None = None,
          feature_cache: FeatureCache | None = None, overwrite: bool = False) -> dict[str, StageResult]:
    """Every stage's folder, model config and data are checked before the first stage trains."""
    accelerator = accelerator or make_accelerator()
    with main_process_lock(Path(cfg.output_dir), "training run", accelerator.state):
        for stage in STAGES:  # later stages too: they were built on the earlier ones
            check_stage_folder(cfg, stage, resume, overwrite, will_run=stage in stages, clear=accelerator.is_main_process)
        if accelerator.is_main_process:
            atomic_write_json(Path(cfg.output_dir) / "train_config.json", cfg.to_dict())
        accelerator.wait_for_everyone()
        connector = meta_connector(cfg.model)
        tokenizer = AutoTokenizer.from_pretrained(cfg.model.llm)
        todo = [s for s in stages if not (resume and (stage_dir(cfg, s) / "summary.json").exists())]
        data = {s: load_stage_data(cfg, s, accelerator, tokenizer, connector.num_output_tokens) for s in todo}
        return {stage: run_stage(cfg, stage, resume, accelerator, feature_cache, data.get(stage)) for stage in stages}
