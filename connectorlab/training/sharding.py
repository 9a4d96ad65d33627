"""FSDP through torch's own FSDP2 (`fully_shard`) on the launch's device mesh: GPUs over NCCL, or CPUs over gloo.

Why not Accelerate's FSDP plugin: Accelerate turns FSDP on only for GPU-like devices (a CPU launch silently runs as
plain data parallel), and its `save_state` writes every parameter, the frozen 7B LM of stage 1 included. FSDP2 runs
on both, and torch's distributed checkpoint (DCP) saves the trainable shards alone (`ignore_frozen_params`), every
process its own, and loads them under another process count (resharding).

Layout: each decoder layer of the LM is its own unit (the LM's `_no_split_modules`, as Accelerate's auto-wrap policy
picks them), the rest (tower, connector, embeddings, head) is the root unit. Frozen and trained parameters may share
a unit: FSDP2 shards per parameter.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError

SHARDINGS = ("none", "fsdp", "zero2", "zero3")  # zero*: DeepSpeed, see `zero`


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    llm = model.llm
    names = set(getattr(llm, "_no_split_modules", None) or getattr(getattr(llm, "base_model", llm), "_no_split_modules", []))
    layers = [m for m in llm.modules() if type(m).__name__ in names]
    if not layers:
        raise InputError(f"sharding = 'fsdp': the LM ({type(llm).__name__}) names no decoder layer class "
                         "(_no_split_modules); it cannot be split into FSDP units")
    return layers


def shard(model: nn.Module, device: torch.device, world: int) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model.to(device)
    if world == 1 and not torch.distributed.is_initialized():
        # One process without a launcher (e.g. resuming a 2-process FSDP checkpoint on one machine): a group of one.
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", store=torch.distributed.HashStore(),
                                             rank=0, world_size=1)
    mesh = init_device_mesh(device.type, (world,))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kw)


def save_sharded(folder, model: nn.Module, optimizer) -> None:
    """Collective: each process writes its shards of the trainable parameters and their optimizer state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer, options=options(ignore_frozen_params=True))
    dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(folder))


def load_sharded(folder, model: nn.Module, optimizer) -> None:
    """Collective; the checkpoint may have been written by another number of processes (DCP reshards)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(model, optimizer, options=options(ignore_frozen_params=True))
    state = {"model": msd, "optimizer": osd}
    dcp.load(state, checkpoint_id=str(folder))  # raises, naming the key, when a trainable tensor is missing
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=options(ignore_frozen_params=True, strict=False))


def full_state(model: nn.Module, trainable_only: bool) -> dict[str, torch.Tensor]:
    """Collective: the whole (or the trainable) state gathered on the main process, on the CPU; empty elsewhere."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=options(full_state_dict=True, cpu_offload=True,
                                                       ignore_frozen_params=trainable_only))


def set_gradient_sync(model: nn.Module, sync: bool) -> None:
    """FSDP2's counterpart of DDP's `no_sync`: micro-batches before the last one keep their gradients local."""
    model.set_requires_gradient_sync(sync)
