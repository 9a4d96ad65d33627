"""DeepSpeed ZeRO-2 and ZeRO-3 through Accelerate, on GPUs and (with `DS_ACCELERATOR=cpu`, over gloo) on CPUs.

connectorlab drives DeepSpeed's engine itself rather than through `accelerator.backward`, for two reasons: the step
loop must see a non-finite loss before the optimizer applies it (Accelerate's wrapper steps inside `backward`), and
gradients are already normalised by the global batch's supervised tokens (DeepSpeed would divide once more by the
accumulation steps). DeepSpeed holds the parameters (ZeRO-3: partitioned) and runs gradient reduction, clipping and
the optimizer step; the LR schedule stays connectorlab's (`get_cosine_schedule_with_warmup` on the optimizer that
DeepSpeed wraps, whose parameter groups it keeps), so every engine follows one schedule.

Models are built whole on every process and partitioned when the engine is made (no `zero.Init`), so ZeRO-3 holds a
whole copy of the weights per process while it sets up (`study plan --estimate` counts it).

Mixed precision is connectorlab's autocast on every engine: DeepSpeed's weights stay in the model's dtype (its own
bf16 mode would cast the frozen tower and LM too, and keep a second, fp32 copy of the trained weights).

Checkpoints go through the engine's own `save_checkpoint(exclude_frozen_parameters=True)`: each process writes its
partition of the optimizer state (ZeRO-3: of the parameters too); frozen weights are never written. DeepSpeed reads
them back with pickle, so before it does, every file is opened weights-only against a short list of DeepSpeed's
plain value classes (`check_weights_only`): a checkpoint from someone else cannot run code, as with the other engines.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError

ZERO_STAGES = {"zero2": 2, "zero3": 3}
ZERO_DIR = "deepspeed"  # the engine's folder inside a connectorlab checkpoint
TAG = "state"  # the engine's tag (sub-folder); fixed, since connectorlab's folder already names the step


def is_zero(sharding: str) -> bool:
    return sharding in ZERO_STAGES


def use_cpu_accelerator() -> None:
    """DeepSpeed picks its accelerator when first imported; without a GPU it must be its CPU one."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def plugin(sharding: str):
    """Accelerate's DeepSpeed plugin for this engine; the batch keys are set per stage (`configure_stage`)."""
    from accelerate.utils import DeepSpeedPlugin

    use_cpu_accelerator()
    # A launch config's DeepSpeed fields were checked against the training config (`check_launch_agrees`); Accelerate
    # would refuse a config given here beside them, as if the launch's values were about to be dropped unseen.
    os.environ.pop("ACCELERATE_CONFIG_DS_FIELDS", None)
    config = {
        "zero_optimization": {"stage": ZERO_STAGES[sharding], "overlap_comm": False, "contiguous_gradients": True,
                              "stage3_gather_16bit_weights_on_model_save": False},
        "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "gradient_clipping": 0.0,
        "zero_allow_untested_optimizer": True,  # torch's AdamW as the client optimizer: no compiled op needed
        "wall_clock_breakdown": False,
    }
    return DeepSpeedPlugin(hf_ds_config=config, zero3_init_flag=False)


def build_models_whole() -> None:
    """Accelerate registers its DeepSpeed config with transformers whatever `zero3_init_flag` says, and transformers
    then builds every model partitioned at construction (a collective): the main process's gathered copy would
    wait for the others forever. connectorlab builds whole models and lets the engine partition them."""
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def check_launch_agrees(sharding: str) -> None:
    """An `accelerate launch` DeepSpeed config must ask for the engine the training config names (the one its
    checkpoints and a study's cells record), and for nothing connectorlab would ignore."""
    launched = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    if launched is not None and (not is_zero(sharding) or str(ZERO_STAGES[sharding]) != launched):
        raise ConfigError(f"this launch's DeepSpeed config asks for ZeRO stage {launched} while the training config has "
                          f"sharding: {sharding}; set sharding: zero{launched} (or launch with configs/accelerate/ddp.yaml)")
    for var in ("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"):
        if os.environ.get(var, "none") not in ("none", ""):
            raise ConfigError(f"this launch's DeepSpeed config offloads to {os.environ[var]} ({var}); connectorlab "
                              "does not run ZeRO-Offload (it would be dropped silently): set offload devices to none")


def configure_stage(accelerator, micro_batch: int, accumulation: int, max_grad_norm: float | None) -> None:
    """The stage's batch split, before `prepare` hands the model to DeepSpeed (which checks micro x accumulation x
    processes = global batch)."""
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    config.update(train_micro_batch_size_per_gpu=micro_batch, gradient_accumulation_steps=accumulation,
                  train_batch_size=micro_batch * accumulation * accelerator.num_processes,
                  gradient_clipping=float(max_grad_norm or 0.0))
    accelerator.gradient_accumulation_steps = accumulation  # Accelerate checks its own value against DeepSpeed's


def backward(engine, loss: torch.Tensor, last: bool) -> None:
    """Gradients reduce across processes on the last micro-batch; the loss is already scaled for the global batch."""
    engine.set_gradient_accumulation_boundary(last)
    engine.backward(loss, scale_wrt_gas=False)


def step(engine) -> float | None:
    """Clipping and the optimizer step (DeepSpeed's), after the loop has seen the loss; the global gradient norm."""
    engine.step()
    norm = engine.get_global_grad_norm()
    return None if norm is None else float(norm)


def save(folder: Path, engine) -> None:
    """Collective: every process writes its partition."""
    engine.save_checkpoint(str(folder), tag=TAG, exclude_frozen_parameters=True, save_latest=False)


def load(folder: Path, engine) -> None:
    """Collective. Strict module loading would reject the frozen weights a checkpoint never holds; the trained ones
    come back from the optimizer's partitions, which must all be there (DeepSpeed raises otherwise)."""
    for file in sorted((folder / TAG).glob("*.pt")):
        check_weights_only(file)
    engine.load_checkpoint(str(folder), tag=TAG, load_module_strict=False, load_optimizer_states=True,
                           load_lr_scheduler_states=False)


def safe_classes() -> list:
    """The value classes DeepSpeed pickles into its checkpoint files: enums and plain records, no code."""
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    found = [ZeroStageEnum, fragment_address]
    try:
        from deepspeed.runtime.fp16.loss_scaler import LossScaler

        found.append(LossScaler)
    except ImportError:  # pragma: no cover - older layouts
        pass
    return found


def check_weights_only(file: Path) -> None:
    """Refuse a file that would need anything but tensors, containers and DeepSpeed's value classes to unpickle."""
    try:
        with torch.serialization.safe_globals(safe_classes()):
            torch.load(file, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - any failure means DeepSpeed's own (pickle) load must not run
        raise CheckpointError(f"{file}: not a plain DeepSpeed checkpoint file, refused before DeepSpeed unpickles "
                              f"it ({str(err).splitlines()[0][:300]})") from None


def full_trainable_state(engine, main: bool) -> dict[str, torch.Tensor]:
    """Collective: every trained parameter whole, in full precision, on the main process (empty elsewhere). The
    frozen ones are not gathered: the saved model rebuilds them from their sources, as every engine's does."""
    from deepspeed.utils import safe_get_full_fp32_param

    state = {}
    for name, param in engine.module.named_parameters():
        if param.requires_grad:
            full = safe_get_full_fp32_param(param)  # every process takes part, each holding one partition
            if main:
                state[name] = full.detach().to(param.dtype).cpu().clone()
    return state


def full_numel(param: torch.nn.Parameter) -> int:
    """A parameter's size, also when ZeRO-3 has replaced its data by this process's partition."""
    return getattr(param, "ds_numel", None) or param.numel()


def full_dim(param: torch.nn.Parameter) -> int:
    shape = getattr(param, "ds_shape", None)
    return len(shape) if shape is not None else param.dim()
