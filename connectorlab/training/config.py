"""Typed training configuration: LLaVA-1.5's recipe as defaults, overridable from YAML and `key=value`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError
from ..model.config import ModelConfig, from_mapping, read_mapping
from ..utils.validation import (
    FRACTION,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    ConfigError,
    Range,
    check_choice,
    check_ranges,
)
from .sharding import SHARDINGS
from .zero import is_zero

STAGES = ("pretrain", "finetune")
TRACKERS = ("none", "tensorboard", "wandb", "mlflow")


@dataclass
class LoraConfig:
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"

    def validate(self, where: str) -> None:
        check_ranges(self, {"r": POSITIVE_INT, "alpha": POSITIVE, "dropout": Range(0, 1, high_open=True)}, where)


@dataclass
class StageConfig:
    data: str | None = None  # LLaVA JSON / JSONL
    image_folder: str | None = None  # default: the data file's folder
    template: str | None = None  # default: plain for pretrain, the model's for finetune
    lr: float | None = None  # default: the stage's (STAGE_DEFAULTS), filled in by TrainConfig
    connector_lr: float | None = None  # a separate rate for the connector (LLaVA's mm_projector_lr); None = lr
    global_batch: int | None = None  # default: the stage's
    micro_batch: int = 16  # per process; accumulation makes up the rest of the global batch
    epochs: int = 1
    max_steps: int | None = None  # stop early (for quick runs); None = full epochs
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    group_by_length: bool = True
    # Global batches sorted by length together (1: LLaVA's grouping, within each global batch; see epoch_order).
    length_span: int = 1
    train_vision: bool = False
    image_workers: int = 4  # threads decoding the next step's images (0: decode inline); results are identical
    lora: LoraConfig | None = None
    init_connector: str | None = None  # finetune: default is this run's pretrain output; "random" = none

    RANGES = {"lr": POSITIVE, "connector_lr": Range(0, low_open=True, optional=True), "global_batch": POSITIVE_INT,
              "micro_batch": POSITIVE_INT, "epochs": POSITIVE_INT, "max_steps": Range(1, integer=True, optional=True),
              "warmup_ratio": FRACTION, "weight_decay": NON_NEGATIVE, "max_grad_norm": NON_NEGATIVE,
              "image_workers": NON_NEGATIVE_INT, "length_span": POSITIVE_INT}

    def validate(self, where: str) -> None:
        check_ranges(self, self.RANGES, where)
        if self.global_batch % self.micro_batch:
            raise ConfigError(f"{where}.global_batch = {self.global_batch} must be a multiple of "
                              f"{where}.micro_batch = {self.micro_batch}")
        if self.lora is not None:
            self.lora.validate(f"{where}.lora")


# LLaVA-1.5's per-stage settings. A StageConfig leaves them None and its TrainConfig fills them in, so that a stage
# built in Python gets the same defaults as one read from YAML (a fine-tuning stage never inherits pre-training's).
STAGE_DEFAULTS = {"pretrain": {"lr": 1e-3, "global_batch": 256, "template": "plain"},
                  "finetune": {"lr": 2e-5, "global_batch": 128}}


@dataclass
class TrainConfig:
    model: ModelConfig
    output_dir: str = "runs/train"
    seed: int = 0
    pretrain: StageConfig = field(default_factory=StageConfig)
    finetune: StageConfig = field(default_factory=StageConfig)
    checkpoint_every: int = 500  # optimizer steps; a checkpoint is also written at the end of each stage
    keep_checkpoints: int = 2
    log_every: int = 1
    strict: bool = False  # raise on the first bad record instead of skipping it
    cache_features: bool = False  # compute frozen-tower features once per stage
    # Decode every image once before training (split over processes) so that a truncated or corrupt file is
    # skipped and counted instead of crashing the stage; false: the header check alone.
    check_images: bool = True
    bf16: bool = False  # autocast to bfloat16 (weights and optimizer stay in the model's dtype)
    fp16: bool = False  # autocast to float16 with a gradient scaler
    gradient_checkpointing: bool = False  # recompute the LM's (and a training tower's) activations in backward
    fused_adamw: bool = False  # torch's fused AdamW kernel (CUDA; CPU in recent torch)
    compile_connector: bool = False  # torch.compile the connector's forward (in place: its weight names stay)
    peak_tflops: float | None = None  # per process, for MFU; default: known for common GPUs, none on CPU
    report_to: str = "none"  # none | tensorboard | wandb | mlflow: Accelerate's trackers get the step log's scalars
    # none: replicated (one process, DDP) | fsdp: torch FSDP2 | zero2, zero3: DeepSpeed ZeRO, over the launch's processes
    sharding: str = "none"
    allow_nonfinite: bool = False  # keep training through a NaN or infinite loss (default: stop at that step)

    RANGES = {"seed": NON_NEGATIVE_INT, "checkpoint_every": POSITIVE_INT, "keep_checkpoints": NON_NEGATIVE_INT,
              "log_every": POSITIVE_INT, "peak_tflops": Range(0, low_open=True, optional=True)}

    def __post_init__(self) -> None:
        check_ranges(self, self.RANGES, "")
        check_choice(self.report_to, TRACKERS, "report_to")
        check_choice(self.sharding, SHARDINGS, "sharding")
        if self.bf16 and self.fp16:
            raise ConfigError("bf16 and fp16 are both true: choose one mixed precision")
        if self.fp16 and is_zero(self.sharding):  # DeepSpeed scales fp16 losses itself, not a GradScaler
            raise ConfigError(f"fp16 with sharding: {self.sharding} is not supported (DeepSpeed's own loss scaling is not "
                              "wired in); use bf16")
        for name in STAGES:
            stage = self.stage(name)
            fills = {k: v for k, v in STAGE_DEFAULTS[name].items() if getattr(stage, k) is None}
            if fills:  # a copy: the caller's StageConfig may serve another TrainConfig too
                setattr(self, name, dataclasses.replace(stage, **fills))
            self.stage(name).validate(name)

    def stage(self, name: str) -> StageConfig:
        if name not in STAGES:
            raise InputError(f"unknown stage {name!r}; valid: {', '.join(STAGES)}")
        return getattr(self, name)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if not isinstance(data, dict):
            raise InputError(f"training config: expected a mapping of keys, got a {type(data).__name__}")
        data = dict(data)
        if "model" not in data:
            raise InputError("training config: missing required key 'model'")
        data["model"] = ModelConfig.from_dict(data["model"])
        for name in STAGES:
            stage = dataclasses.asdict(StageConfig())
            given = data.get(name) or {}
            if not isinstance(given, dict):
                raise InputError(f"{name}: expected a mapping of keys, got {given!r}")
            stage.update(given)
            if isinstance(stage.get("lora"), dict):
                stage["lora"] = from_mapping(LoraConfig, stage["lora"], f"{name}.lora")
            data[name] = from_mapping(StageConfig, stage, name)
        return from_mapping(cls, data, "training config")

    @classmethod
    def from_file(cls, path: str | Path, overrides: list[str] = ()) -> TrainConfig:
        data = read_mapping(path)
        for item in overrides:  # relative paths stay relative to the working directory, as in LLaVA's scripts
            apply_override(data, item)
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ConfigError(f"{path}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def apply_override(data: dict, item: str) -> None:
    """`pretrain.lr=1e-4` -> data['pretrain']['lr'] = 0.0001 (values parsed as YAML)."""
    if "=" not in item:
        raise InputError(f"override {item!r} must look like key.sub=value")
    key, value = item.split("=", 1)
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError(f"override {item!r}: {part!r} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise InputError(f"override {item!r}: the value is not valid YAML ({err})") from None
