"""Checkpoints that make a resumed run bitwise equal to an uninterrupted one on CPU.

A checkpoint holds only what training changes (trainable weights, optimizer, scheduler), every
process's RNG states and the data position. It is written into a hidden temporary folder and
renamed into place, so `--resume` only ever sees complete ones.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..utils.io import atomic_write_json

STEP_DIR = re.compile(r"^step-(\d{7})$")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def list_checkpoints(folder: Path) -> list[Path]:
    if not folder.exists():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and STEP_DIR.match(p.name)), key=lambda p: p.name)


def save_checkpoint(accelerator, folder: Path, step: int, model, optimizer, scheduler, state: dict, keep: int) -> Path:
    """Collective: every process calls it (each saves its own RNG state)."""
    final = folder / f"step-{step:07d}"
    tmp = folder / f".step-{step:07d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng-rank{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        save_file(trainable_state(accelerator.unwrap_model(model)), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        atomic_write_json(tmp / "state.json", {**state, "step": step, "processes": accelerator.num_processes})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path, model, optimizer, scheduler) -> dict:
    state = json.loads((path / "state.json").read_text())
    if state["processes"] != accelerator.num_processes:
        raise ValueError(f"{path}: written by {state['processes']} processes; resuming with "
                         f"{accelerator.num_processes} would change the RNG streams (exact resume needs the same count)")
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(accelerator.unwrap_model(model).named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks trainable parameters {missing[:5]}")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    set_rng_state(torch.load(path / f"rng-rank{accelerator.process_index}.pt", weights_only=False))
    return state
