"""What a cell costs before it is launched: parameters, memory per process under each engine, and GPU-hours.

Memory per process, in the bytes connectorlab's engines actually hold (weights, gradients and AdamW's two moments stay
in the model's dtype; bf16 is autocast): DDP replicates everything; FSDP (torch FSDP2, each decoder layer a unit)
keeps 1/N of every parameter, gradient and moment plus the unsharded root unit (tower, connector, embeddings, head),
two decoder layers in flight and one unit's whole gradients before they are reduce-scattered; DDP's communication
buckets hold a second copy of the gradients; ZeRO-2 replicates the weights and partitions gradients and the optimizer, which
DeepSpeed runs on an fp32 copy of each process's partition (4 + 8 bytes per trained parameter / N); ZeRO-3 partitions
the weights too, holds the modules in flight (its prefetch bucket), and while it sets up holds a whole copy (models are
built whole and partitioned by the engine). Activations per micro-batch: for each LM layer and token, the tensors
autograd keeps (norm inputs, q/k/v and the attention output, the MLP's inner activations; the inputs of the linear
layers only where the LM trains), or with gradient checkpointing each layer's input plus one layer's set; the LM head
runs at supervised positions only (fp32 logits and their gradient); a trained tower adds its own layers.

The count is of live tensors (what a GPU's `max_memory_allocated` sees, plus a fixed reserve for the CUDA context);
a CPU's resident peak also keeps freed memory and library buffers, and is under-counted (benchmarks/results/
estimate_validation.json gives the error per engine).

Time: the model FLOPs of `training.throughput.FlopModel` (the count the step log's MFU uses) over the stage's
samples, at a stated MFU of the GPU's dense bf16 peak; gradient checkpointing adds one LM forward.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..model.shape import ModelShape
from ..training.config import TrainConfig
from ..training.throughput import PEAK_FLOPS, FlopModel

ENGINES = ("ddp", "fsdp", "zero2", "zero3")
# name: (memory GiB, key of the dense bf16 peak in training.throughput.PEAK_FLOPS)
GPUS = {"a100-40gb": (40, "A100"), "a100-80gb": (80, "A100"), "h100-80gb": (80, "H100"), "h200-141gb": (141, "H200"),
        "l40s-48gb": (48, "L40S"), "a10g-24gb": (24, "A10G"), "l4-24gb": (24, "L4")}
GIB = 2**30
ZERO3_PREFETCH = 5e7  # DeepSpeed's stage3_prefetch_bucket_size default, in elements
ZERO_REDUCE_BUCKET = 5e8  # DeepSpeed's reduce_bucket_size default, in elements
RESERVED_GIB = 1.5  # CUDA context and the allocator's fragmentation, per GPU (none counted on a CPU)


def dtype_bytes(name: str) -> int:
    return 2 if name in ("bfloat16", "float16") else 4


@dataclass
class Sizes:
    """Parameter counts of one cell's model, from its shape (config.json or the plan's `shape`)."""

    vision: float
    vision_linear: float  # matmul weights (FLOPs per patch / 2)
    connector: float
    llm_layer: float  # one decoder layer's matmul weights
    embed: float
    head: float  # 0 when tied to the embeddings
    layers: int
    llm_dim: int
    llm_intermediate: int
    vocab: int
    vision_dim: int
    vision_intermediate: int
    vision_layers: int
    patches: int  # with the CLS token

    @property
    def llm(self) -> float:
        return self.layers * self.llm_layer + self.embed + self.head

    @classmethod
    def of(cls, shape: ModelShape, grid: tuple[int, int], connector_params: int) -> Sizes:
        missing = [k for k in ModelShape.SIZE_KEYS if getattr(shape, k) is None]
        if missing:
            raise ConfigError(f"--estimate needs the model's sizes: give shape.{', shape.'.join(missing)} in the plan "
                              "(from the checkpoints' config.json), or have the checkpoints on this machine")
        h, i, d, di = shape.llm_dim, shape.llm_intermediate, shape.vision_dim, shape.vision_intermediate
        vision_layer = 4 * d * d + 2 * d * di
        patches = grid[0] * grid[1] + 1
        vision_linear = shape.vision_layers * vision_layer
        vision = vision_linear + 3 * shape.patch_size**2 * d + patches * d
        llm_layer = (2 + 2 * shape.llm_kv_heads_ratio) * h * h + 3 * h * i
        embed = shape.vocab_size * h
        return cls(vision, vision_linear, connector_params, llm_layer, embed, 0 if shape.tied_embeddings else embed,
                   shape.llm_layers, h, i, shape.vocab_size, d, di, shape.vision_layers, patches)


@dataclass
class StageCost:
    """One stage of one cell: what trains, memory per process per engine (GiB, without and with gradient
    checkpointing, the setup peak included), and FLOPs per sample."""

    stage: str
    trainable: float
    frozen: float
    memory: dict[str, tuple[float, float]]
    breakdown: dict[str, dict[str, float]]  # engine -> part -> GiB (without checkpointing)
    flops_per_sample: float
    samples: int
    gc_flops_per_sample: float

    def fits(self, engine: str, gc: bool, gpu_gib: float) -> bool:
        return self.memory[engine][int(gc)] <= gpu_gib

    def recommend(self, gpu_gib: float) -> tuple[str, bool] | None:
        """The engine that fits with the least communication, preferring no recomputation."""
        for gc in (False, True):
            for engine in ("ddp", "zero2", "fsdp", "zero3"):
                if self.fits(engine, gc, gpu_gib):
                    return engine, gc
        return None


def trainable_split(cfg: TrainConfig, stage: str, sizes: Sizes) -> tuple[float, float]:
    """(trained, frozen) parameters of the stage, LoRA adapters counted from their target modules."""
    total = sizes.vision + sizes.connector + sizes.llm
    if stage == "pretrain":
        return sizes.connector, total - sizes.connector
    sc = cfg.stage(stage)
    trained = sizes.connector + (sizes.vision if sc.train_vision else 0)
    if sc.lora is None:
        trained += sizes.llm
    else:
        h, i = sizes.llm_dim, sizes.llm_intermediate
        per_layer = sc.lora.r * (4 * 2 * h + 3 * (h + i))  # all-linear: q, k, v, o and the three MLP projections
        trained += sizes.layers * per_layer
        total += sizes.layers * per_layer
    return trained, total - trained


def activations(cfg: TrainConfig, stage: str, sizes: Sizes, seq: float, supervised: float, gc: bool) -> float:
    """Bytes of one micro-batch's saved activations on one process."""
    sc = cfg.stage(stage)
    a = 2 if (cfg.bf16 or cfg.fp16 or dtype_bytes(cfg.model.dtype) == 2) else 4
    h, i = sizes.llm_dim, sizes.llm_intermediate
    llm_trains = stage != "pretrain"  # LoRA too: its adapters need their layers' inputs
    per_layer = (8 * h + 4 * i) if llm_trains else (6 * h + 3 * i)
    tokens = sc.micro_batch * seq
    if gc:
        llm = tokens * (sizes.layers * h + per_layer) * a
    else:
        llm = tokens * sizes.layers * per_layer * a
    head = sc.micro_batch * supervised * sizes.vocab * (a + 8)  # logits, their fp32 copy for the loss, the gradient
    vision = 0.0
    if stage != "pretrain" and sc.train_vision:
        d, di = sizes.vision_dim, sizes.vision_intermediate
        vision = sc.micro_batch * sizes.patches * sizes.vision_layers * (8 * d + 3 * di) * a * (0.15 if gc else 1)
    return llm + head + vision


def engine_memory(engine: str, trained: float, frozen: float, sizes: Sizes, p: int, n: int) -> dict[str, float]:
    """Bytes per process of weights, gradients and optimizer state (activations apart)."""
    weights = (trained + frozen) * p
    root = sizes.vision + sizes.connector + sizes.embed + sizes.head  # FSDP's root unit, gathered through the step
    if engine == "ddp":  # DDP's communication buckets hold a second copy of the gradients
        return {"weights": weights, "gradients": 2 * trained * p, "optimizer": 2 * trained * p}
    if engine == "fsdp":  # a unit's gradients are whole until they are reduce-scattered
        unit = min(trained, max(root, sizes.llm_layer))
        return {"weights": weights / n + (root + 2 * sizes.llm_layer) * p, "gradients": trained * p / n + unit * p,
                "optimizer": 2 * trained * p / n}
    master = (4 + 8) * trained / n  # fp32 partition and AdamW's moments, whatever the model's dtype
    if engine == "zero2":
        return {"weights": weights, "gradients": trained * p / n + min(trained, ZERO_REDUCE_BUCKET) * p,
                "optimizer": master}
    in_flight = min(max(2 * sizes.llm_layer, ZERO3_PREFETCH, sizes.embed), trained + frozen) * p
    return {"weights": weights / n + in_flight, "gradients": trained * p / n + min(trained, ZERO_REDUCE_BUCKET) * p,
            "optimizer": master, "setup": weights}  # the whole model, before the engine partitions it


@dataclass
class Workload:
    """Per sample of a stage: text tokens and the supervised ones among them (mean), and the stage's sample count."""

    text_tokens: float
    supervised_tokens: float
    samples: int


def stage_cost(cfg: TrainConfig, stage: str, sizes: Sizes, connector_flops: float, visual_tokens: int,
               processes: int, work: Workload, on_gpu: bool = True) -> StageCost:
    sc = cfg.stage(stage)
    trained, frozen = trainable_split(cfg, stage, sizes)
    p = dtype_bytes(cfg.model.dtype)
    seq, supervised = visual_tokens + work.text_tokens, work.supervised_tokens
    reserved = RESERVED_GIB * GIB if on_gpu else 0.0
    memory, breakdown = {}, {}
    for engine in ENGINES:
        parts = engine_memory(engine, trained, frozen, sizes, p, processes)
        setup = parts.pop("setup", 0.0)
        pair = []
        for gc in (False, True):
            act = activations(cfg, stage, sizes, seq, supervised, gc)
            pair.append(max(sum(parts.values()) + act, setup) + reserved)
            if not gc:
                breakdown[engine] = {k: v / GIB for k, v in {**parts, "activations": act, "setup_peak": setup}.items()}
        memory[engine] = (pair[0] / GIB, pair[1] / GIB)
    flops = flop_model(cfg, stage, sizes, connector_flops)
    per_sample = flops.step(int(round(seq)), int(round(supervised)), 1)
    recompute = flops.llm_per_token * seq  # one more LM forward per sample
    samples = work.samples * sc.epochs
    if sc.max_steps is not None:
        samples = min(samples, sc.max_steps * sc.global_batch)
    return StageCost(stage, trained, frozen, memory, breakdown, per_sample, samples, per_sample + recompute)


def flop_model(cfg: TrainConfig, stage: str, sizes: Sizes, connector_flops: float) -> FlopModel:
    sc = cfg.stage(stage)
    llm_trains = stage != "pretrain"
    vision_trains = stage != "pretrain" and sc.train_vision
    cached = cfg.cache_features and not vision_trains
    return FlopModel(llm_per_token=2 * sizes.layers * sizes.llm_layer, head_per_token=2 * sizes.embed,
                     vision_per_image=0.0 if cached else 2 * sizes.vision_linear * sizes.patches,
                     connector_per_image=float(connector_flops), llm_factor=3 if llm_trains else 2,
                     connector_factor=3, vision_factor=3 if vision_trains else 1)


def peak_flops(gpu: str) -> tuple[float, float]:
    """(memory GiB, dense bf16 FLOP/s) of a named GPU."""
    if gpu not in GPUS:
        raise ConfigError(f"--gpu {gpu!r}: unknown; known: {', '.join(GPUS)}")
    gib, key = GPUS[gpu]
    return gib, PEAK_FLOPS[key]


def gpu_hours(flops: float, gpu: str, mfu: float) -> float:
    return flops / (peak_flops(gpu)[1] * mfu) / 3600

