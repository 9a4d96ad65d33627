"""LLaVA's two-stage recipe on one CPU or many GPUs through Accelerate.

Stage `pretrain` trains the connector alone; `finetune` trains connector + LM (optionally LoRA,
optionally the tower) from the pre-trained connector. Gradients are normalised by the number of
supervised tokens in the whole global batch, so any split over processes and micro-batches gives
the same update (up to float summation order).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, set_seed
from transformers import get_cosine_schedule_with_warmup

from ..data.batching import StepPlan, accumulation_steps
from ..errors import InputError, MissingPathError
from ..language.tokenizer import load_tokenizer
from ..model.mllm import CONNECTOR_WEIGHTS, MultimodalLM
from ..model.shape import meta_connector
from ..utils.distributed import decided_on_main, main_process_lock
from ..utils.io import atomic_write_json
from ..utils.progress import progress_bar
from ..utils.validation import ConfigError
from . import zero
from .checkpoint import load_checkpoint, newest_valid
from .config import STAGES, StageConfig, TrainConfig
from .feature_cache import FeatureCache
from .loop import StageRun, StepTotals, train_steps
from .metrics import StepLog, current_memory_mb, peak_memory_mb
from .run_folder import STAGE_SUMMARY, check_stage_folder, record_stage_config
from .sharding import full_state, shard
from .stage_data import StageData, load_stage_data
from .throughput import device_peak_flops
from .tracking import check_tracker, open_tracker

log = logging.getLogger("connectorlab.train")


def requested_engine() -> str | None:
    """The sharding engine an `accelerate launch` config asks for (Accelerate passes it on in the environment)."""
    from accelerate.utils import str_to_bool

    for name, var in (("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"), ("Accelerate's FSDP plugin", "ACCELERATE_USE_FSDP")):
        if str_to_bool(os.environ.get(var, "false")):
            return name
    return None


def make_accelerator(sharding: str = "none") -> Accelerator:
    """The accelerator for a run whose training config says `sharding`. A requested engine is the engine that runs or
    an error: `cpu=True` (how a multi-process CPU launch gets gloo) would drop a DeepSpeed or FSDP-plugin launch
    config silently, so DeepSpeed gets `cpu=False` and gloo named explicitly, and the FSDP plugin is refused.
    Text-only batches leave the connector unused; DDP must tolerate that."""
    engine, gpu = requested_engine(), torch.cuda.is_available()
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    if engine == "DeepSpeed" or zero.is_zero(sharding):
        zero.check_launch_agrees(sharding)
        if os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
            raise ConfigError("this launch names a DeepSpeed JSON config; connectorlab builds DeepSpeed's config from "
                              "the training config (sharding, batch, clipping): give zero_stage in the launch config, "
                              "or launch with configs/accelerate/ddp.yaml and set sharding: zero2 or zero3")
        if int(os.environ.get("LOCAL_RANK", -1)) == -1:
            raise ConfigError(f"sharding: {sharding} runs under a launcher (accelerate launch --multi_gpu, torchrun) "
                              "that starts the processes it shards over; one process has nothing to shard")
        if not gpu:  # Accelerate finds no backend for a CPU device otherwise, and each rank thinks it is alone
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
        accelerator = Accelerator(cpu=False, deepspeed_plugin=zero.plugin(sharding), kwargs_handlers=handlers)
        zero.build_models_whole()
        return accelerator
    if engine is not None and not gpu:
        raise ConfigError(f"this launch asks for {engine}, which connectorlab does not run (on a CPU it would "
                          "silently train as plain data parallel); launch as plain multi-process "
                          "(configs/accelerate/ddp.yaml) and set sharding: fsdp for sharded training")
    return Accelerator(cpu=not gpu, kwargs_handlers=handlers)


def stage_dir(cfg: TrainConfig, stage: str) -> Path:
    return Path(cfg.output_dir) / stage


def build_stage_model(cfg: TrainConfig, stage: str, sc: StageConfig) -> MultimodalLM:
    set_seed(cfg.seed)  # identical connector initialisation on every process
    model = MultimodalLM.build(cfg.model)
    if stage == "pretrain":
        model.set_trainable(vision=False, connector=True, llm=False)
    else:
        init_connector(model, cfg, sc)
        model.set_trainable(vision=sc.train_vision, connector=True, llm=sc.lora is None)
        if sc.lora is not None:
            from peft import LoraConfig, get_peft_model

            model.llm = get_peft_model(model.llm, LoraConfig(r=sc.lora.r, lora_alpha=sc.lora.alpha,
                                                             lora_dropout=sc.lora.dropout,
                                                             target_modules=sc.lora.target_modules, task_type="CAUSAL_LM"))
    if cfg.gradient_checkpointing:  # non-reentrant: works when only the inputs need a gradient (stage 1's frozen LM)
        for part in [model.llm] + ([] if model.vision.frozen else [model.vision.model]):
            if hasattr(part, "activation_checkpointing_enable"):  # transformers >= 5.x's name
                part.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                part.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.compile_connector:
        model.connector.compile()  # in place: parameter names, and so checkpoints and saved models, are unchanged
    return model


def init_connector(model: MultimodalLM, cfg: TrainConfig, sc: StageConfig) -> None:
    """Fine-tuning starts from the pre-trained connector: this run's stage 1, or `init_connector`."""
    init = Path(sc.init_connector) if sc.init_connector else stage_dir(cfg, "pretrain") / CONNECTOR_WEIGHTS
    if sc.init_connector == "random":
        pass  # an explicit choice (e.g. a text-only LM warm-up), not a missing file
    elif init.exists():
        model.load_connector(init)
    elif sc.init_connector:
        raise MissingPathError(f"finetune.init_connector {init} does not exist")
    else:
        log.warning("no pre-trained connector at %s; fine-tuning starts from a random connector", init)


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

    @property
    def flops_per_sample(self) -> float | None:
        """Model FLOPs of one training sample (forward and backward), counted from the model's own shape."""
        return self.summary.get("model_flops_per_sample")

    @property
    def peak_memory_mb(self) -> float:
        """The largest peak of the stage's processes."""
        return self.summary["peak_memory_mb"]


def stage_artifact(folder: Path, stage: str) -> Path:
    return folder / (CONNECTOR_WEIGHTS if stage == "pretrain" else "model")


def finished_stage(cfg: TrainConfig, stage: str) -> StageResult:
    """The result of a stage that another process (e.g. `accelerate launch`) finished."""
    folder = stage_dir(cfg, stage)
    summary = folder / STAGE_SUMMARY
    if not summary.exists():
        raise MissingPathError(f"{folder}: the {stage} stage has not finished (no {STAGE_SUMMARY})")
    return StageResult(stage, folder, json.loads(summary.read_text()), stage_artifact(folder, stage))


def make_optimizer(model: MultimodalLM, sc: StageConfig, fused: bool) -> tuple[list, torch.optim.Optimizer]:
    """AdamW over the trainable parameters, the connector in its own group (LLaVA's `mm_projector_lr`)."""
    params = [p for p in model.parameters() if p.requires_grad]
    connector_ids = {id(p) for p in model.connector.parameters()}
    groups = [{"params": [p for p in params if id(p) in connector_ids], "lr": sc.connector_lr or sc.lr},
              {"params": [p for p in params if id(p) not in connector_ids], "lr": sc.lr}]
    extra = {"fused": True} if fused else {}
    return params, torch.optim.AdamW([g for g in groups if g["params"]], lr=sc.lr, weight_decay=sc.weight_decay, **extra)


def prepare_stage(cfg: TrainConfig, stage: str, accelerator: Accelerator, data: StageData, resume: bool) -> StageRun:
    """Model, step plan, optimizer and schedule, and the state of the newest complete checkpoint when resuming."""
    sc = cfg.stage(stage)
    before = current_memory_mb(accelerator.device)
    model = build_stage_model(cfg, stage, sc)
    world, rank = accelerator.num_processes, accelerator.process_index
    accum = accumulation_steps(sc.global_batch, world, sc.micro_batch)
    samples = data.samples
    plan = StepPlan([s.length for s in samples], [s.image is not None for s in samples], sc.global_batch, cfg.seed,
                    sc.group_by_length, world, rank, sc.micro_batch, sc.length_span)
    if plan.steps_per_epoch == 0:
        raise InputError(f"{stage}: {len(samples)} usable records cannot fill one global batch of {sc.global_batch}")
    total = plan.steps_per_epoch * sc.epochs if sc.max_steps is None else min(sc.max_steps, plan.steps_per_epoch * sc.epochs)
    check_engine(cfg, accelerator)
    if cfg.sharding == "fsdp":  # sharded in place before the optimizer is made, so that it holds the shards
        model = shard(model, accelerator.device, world)
    params, optimizer = make_optimizer(model, sc, cfg.fused_adamw)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(sc.warmup_ratio * total), total)
    if zero.is_zero(cfg.sharding):  # the scheduler stays outside the engine: connectorlab steps it, as for DDP
        zero.configure_stage(accelerator, sc.micro_batch, accum, sc.max_grad_norm)
    prepared, optimizer = (model, optimizer) if cfg.sharding == "fsdp" else accelerator.prepare(model, optimizer)
    run = StageRun(cfg, stage, accelerator, stage_dir(cfg, stage), data, prepared, accelerator.unwrap_model(prepared),
                   optimizer, scheduler, params, plan, total, accum, memory_before_mb=before)
    ckpt_dir = run.out / "checkpoints"
    latest = decided_on_main(accelerator.state, lambda: newest_valid(ckpt_dir, log)) if resume else None
    if latest is not None:
        state = load_checkpoint(accelerator, latest, prepared, optimizer, scheduler, sharding=cfg.sharding)
        run.start, run.elapsed_before, run.resumed_from = state["step"], state["elapsed_s"], str(latest)
        run.resharded_from = state.get("resharded_from")
        if accelerator.is_main_process:
            log.info("%s: resumed from %s (step %d)%s", stage, latest, run.start,
                     f", resharded from {run.resharded_from} processes" if run.resharded_from else "")
    else:
        set_seed(cfg.seed + 1000 * (1 + STAGES.index(stage)) + rank)
    return run


def check_engine(cfg: TrainConfig, accelerator: Accelerator) -> None:
    """The accelerator runs the engine the config names. FSDP is connectorlab's own (torch FSDP2, see `sharding`):
    Accelerate's FSDP plugin is refused, since it would save the frozen LM and does not run on CPU."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        raise ConfigError("this launch enables Accelerate's FSDP plugin; connectorlab shards with torch FSDP2 itself: "
                          "launch as plain multi-process (configs/accelerate/ddp.yaml) and set sharding: fsdp")
    has_deepspeed = accelerator.state.deepspeed_plugin is not None
    if has_deepspeed != zero.is_zero(cfg.sharding):
        raise ConfigError(f"sharding: {cfg.sharding}, but the accelerator was made "
                          f"{'with' if has_deepspeed else 'without'} DeepSpeed: make it with "
                          "make_accelerator(cfg.sharding)")


def finish_stage(run: StageRun, totals: StepTotals, steplog: StepLog | None) -> StageResult:
    """The summary (time, throughput, MFU, memory of every process, skips) and the stage's artifact, written once."""
    from accelerate.utils import gather_object

    cfg, sc, accelerator, inner = run.cfg, run.sc, run.accelerator, run.inner
    samples, device, world = run.data.samples, accelerator.device, accelerator.num_processes
    mine = [peak_memory_mb(device), run.memory_before_mb]
    memory = gather_object([mine]) if world > 1 else [mine]
    peak = device_peak_flops(device, cfg.peak_tflops)
    session_s = totals.wall_s - run.elapsed_before  # the steps this session ran, for rates
    summary = {
        "stage": run.stage, "wall_clock_s": totals.wall_s, "steps": run.total, "samples": run.total * sc.global_batch,
        "records": {"usable": len(samples), "dropped_tail_per_epoch": len(samples) - run.plan.steps_per_epoch * sc.global_batch},
        "skipped": run.data.report.to_dict(), "global_batch": sc.global_batch, "micro_batch": sc.micro_batch,
        "gradient_accumulation": run.accum, "processes": world,
        "trainable_parameters": sum(zero.full_numel(p) for p in run.params),
        "visual_tokens_per_image": inner.connector.num_output_tokens, "connector": cfg.model.connector,
        "connector_options": cfg.model.connector_options, "image_size": inner.vision.image_size,
        "peak_memory_mb": max(m[0] for m in memory), "peak_memory_mb_per_process": [m[0] for m in memory],
        "memory_before_model_mb_per_process": [m[1] for m in memory],  # the baseline of each process's peak
        "tokens_per_s": totals.tokens / session_s if session_s > 0 and totals.steps else None,
        "model_tflops_per_s": totals.flops / session_s / 1e12 if session_s > 0 and totals.steps else None,
        "mfu": totals.flops / session_s / (peak * world) if peak and session_s > 0 and totals.steps else None,
        "model_flops_per_sample": totals.flops / (totals.steps * sc.global_batch) if totals.steps else None,
        "peak_flops_per_process": peak,
        "final_loss": steplog.losses[-1] if steplog and steplog.losses else None,
        "first_loss": steplog.losses[0] if steplog and steplog.losses else None,
        "resumed_from": run.resumed_from, "resharded_from": run.resharded_from, "sharding": cfg.sharding,
        "feature_cache": totals.cached, "feature_cache_s": totals.cache_s,
        "bf16": cfg.bf16, "fp16": cfg.fp16, "gradient_checkpointing": cfg.gradient_checkpointing,
    }
    artifact = stage_artifact(run.out, run.stage)
    whole = gathered_model(run) if run.fsdp or run.zero else inner
    if accelerator.is_main_process:
        if run.stage == "pretrain":
            whole.save_connector(artifact)
        else:
            whole.save_pretrained(artifact, source_config=cfg.model, overwrite=True)  # the stage folder is this run's
        atomic_write_json(run.out / STAGE_SUMMARY, summary)
        log.info("%s done in %.1fs: %s", run.stage, totals.wall_s, run.out / STAGE_SUMMARY)
    accelerator.wait_for_everyone()
    return StageResult(run.stage, run.out, summary, artifact)


def gathered_model(run: StageRun) -> MultimodalLM | None:
    """Collective under FSDP and ZeRO: the sharded model's trained state gathered once on the main process, into an
    unsharded model built as the stage built it (LoRA included, merged by `save_pretrained`); None elsewhere."""
    main = run.accelerator.is_main_process
    if run.zero:
        state = zero.full_trainable_state(run.model, main)
    else:  # stage 1 makes the connector alone; later stages the whole model
        state = full_state(run.model, trainable_only=run.stage == "pretrain")
    if not main:
        return None
    model = build_stage_model(dataclasses.replace(run.cfg, gradient_checkpointing=False, compile_connector=False),
                              run.stage, run.sc)
    missing = set(name for name, p in model.named_parameters() if p.requires_grad) - set(state)
    if missing:
        raise RuntimeError(f"gathering the {run.cfg.sharding} model: no full tensor for {sorted(missing)[:5]}")
    model.load_state_dict(state, strict=run.stage != "pretrain" and not run.zero)
    return model


def run_stage(cfg: TrainConfig, stage: str, resume: bool = False, accelerator: Accelerator | None = None,
              feature_cache: FeatureCache | None = None, data: StageData | None = None,
              overwrite: bool = False) -> StageResult:
    """One stage: checked folder, prepared model and data, the step loop, then the summary and the artifact."""
    accelerator = accelerator or make_accelerator(cfg.sharding)
    out = stage_dir(cfg, stage)
    main = accelerator.is_main_process
    check_stage_folder(cfg, stage, resume, overwrite, will_run=True, clear=main)
    accelerator.wait_for_everyone()
    if resume and (out / STAGE_SUMMARY).exists():
        log.info("%s already finished (%s); skipping", stage, out / STAGE_SUMMARY)
        return finished_stage(cfg, stage)
    check_tracker(cfg.report_to)
    if main:
        record_stage_config(cfg, stage)
    run = prepare_stage(cfg, stage, accelerator, data or load_stage_data(cfg, stage, accelerator), resume)
    steplog = StepLog(out / "log.jsonl", run.start if run.resumed_from else None,
                      open_tracker(cfg.report_to, stage, out, cfg.to_dict())) if main else None
    try:
        with progress_bar(main) as bar:
            totals = train_steps(run, steplog, feature_cache, bar)
        return finish_stage(run, totals, steplog)
    finally:
        if steplog is not None:
            steplog.close()


def train(cfg: TrainConfig, stages: list[str], resume: bool = False, accelerator: Accelerator | None = None,
          feature_cache: FeatureCache | None = None, overwrite: bool = False) -> dict[str, StageResult]:
    """Every stage's folder, model config and data are checked before the first stage trains."""
    accelerator = accelerator or make_accelerator(cfg.sharding)
    with main_process_lock(Path(cfg.output_dir), "training run", accelerator.state):
        for stage in STAGES:  # later stages too: they were built on the earlier ones
            check_stage_folder(cfg, stage, resume, overwrite, will_run=stage in stages, clear=accelerator.is_main_process)
        if accelerator.is_main_process:
            atomic_write_json(Path(cfg.output_dir) / "train_config.json", cfg.to_dict())
        accelerator.wait_for_everyone()
        connector = meta_connector(cfg.model)
        tokenizer = load_tokenizer(cfg.model.llm)
        todo = [s for s in stages if not (resume and (stage_dir(cfg, s) / STAGE_SUMMARY).exists())]
        data = {s: load_stage_data(cfg, s, accelerator, tokenizer, connector.num_output_tokens) for s in todo}
        return {stage: run_stage(cfg, stage, resume, accelerator, feature_cache, data.get(stage)) for stage in stages}
