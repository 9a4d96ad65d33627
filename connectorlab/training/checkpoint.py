"""Checkpoints that make a resumed run bitwise equal to an uninterrupted one on CPU.

A checkpoint holds only what training changes (trainable weights, optimizer, scheduler), every
process's RNG states and the data position; frozen weights are never written. Replicated runs (one
process, DDP) write the main process's copy; FSDP runs write torch DCP shards, every process its own; ZeRO runs
write DeepSpeed's own checkpoint (every process its partition, see `zero`).
It is written into a hidden temporary folder and
renamed into place, so `--resume` only ever sees complete ones. Everything in it loads with
`torch.load(weights_only=True)` or as safetensors/JSON: resuming from a checkpoint someone else made
cannot run code.
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

from ..errors import CheckpointError, InputError
from ..utils.io import DiskFullError, atomic_write_json, file_sha256, free_mib, is_disk_full
from ..utils.weights import reading
from . import zero
from .sharding import load_sharded, save_sharded

STEP_DIR = re.compile(r"^step-(\d{7})$")
MANIFEST = "manifest.json"  # every other file's size and sha256, written last: a checkpoint without it is incomplete
SET_ASIDE = ".corrupt"  # suffix of a checkpoint that failed verification, kept for inspection but never resumed
SHARDED = "sharded"  # the DCP folder of an FSDP checkpoint: one file per process, trainable tensors only


def rng_state() -> dict:
    """Plain tensors, ints and tuples only (numpy's key array as a tensor), so that it loads weights-only."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def list_checkpoints(folder: Path) -> list[Path]:
    if not folder.exists():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and STEP_DIR.match(p.name)), key=lambda p: p.name)


def save_checkpoint(accelerator, folder: Path, step: int, model, optimizer, scheduler, state: dict, keep: int,
                    sharding: str = "none") -> Path:
    """Collective: every process calls it (each saves its own RNG state, and under FSDP or ZeRO its own shards)."""
    final = folder / f"step-{step:07d}"
    marker = folder / f".step-{step:07d}.tmp"  # a fixed name that every process can find
    if accelerator.is_main_process:
        shutil.rmtree(marker, ignore_errors=True)
        marker.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        torch.save(rng_state(), marker / f"rng-rank{accelerator.process_index}.pt")
        if sharding == "fsdp":
            save_sharded(marker / SHARDED, model, optimizer)
        elif zero.is_zero(sharding):
            zero.save(marker / zero.ZERO_DIR, model)
        if accelerator.is_main_process:
            if sharding == "none":  # replicated (one process, DDP): the main process's copy is everyone's
                save_file(trainable_state(accelerator.unwrap_model(model)), str(marker / "trainable.safetensors"))
                torch.save(optimizer.state_dict(), marker / "optimizer.pt")
            torch.save(scheduler.state_dict(), marker / "scheduler.pt")
            atomic_write_json(marker / "state.json", {**state, "step": step, "processes": accelerator.num_processes,
                                                      "sharding": sharding})
    except (OSError, RuntimeError) as err:
        full = is_disk_full(err, folder)
        shutil.rmtree(marker, ignore_errors=True)
        if full:
            raise DiskFullError(f"no space left on the disk of {folder} while writing checkpoint {final.name} "
                                f"({free_mib(folder):.0f} MiB free); the partial checkpoint was removed and earlier "
                                "ones are intact: free some space, then run again with --resume") from None
        raise OSError(f"writing checkpoint {final} failed: {err}") from err
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(marker / MANIFEST, manifest(marker))  # after every process's files are complete
        if final.exists():
            shutil.rmtree(final)
        os.replace(marker, final)
        for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def manifest(folder: Path) -> dict:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {"files": {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in files}}


def verify(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be trusted (a file missing, cut short or changed since it was written), or
    None when every file matches its manifest."""
    if not (path / MANIFEST).is_file():
        return f"no {MANIFEST} (written before checkpoints were verified, or not complete)"
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
    except (ValueError, KeyError, TypeError) as err:
        return f"{MANIFEST} is unreadable ({err})"
    for rel, want in files.items():
        file = path / rel
        if not file.is_file():
            return f"{file} is missing"
        if file.stat().st_size != want["bytes"]:
            return f"{file} has {file.stat().st_size} bytes, {want['bytes']} were written"
        if file_sha256(file) != want["sha256"]:
            return f"{file} does not match the sha256 it was written with (changed or corrupted on disk)"
    return None


def newest_valid(folder: Path, log) -> Path | None:
    """The newest checkpoint that verifies; each newer one that does not is set aside (renamed `*.corrupt`), saying
    why. None when there is none at all; an error naming the file when every one fails."""
    found = list_checkpoints(folder)
    problems = []
    for path in reversed(found):
        problem = verify(path)
        if problem is None:
            if problems:
                log.warning("resuming from %s, the newest checkpoint that verifies", path.name)
            return path
        problems.append(problem)
        log.warning("checkpoint %s cannot be resumed from: %s; set aside as %s%s", path, problem, path.name, SET_ASIDE)
        os.replace(path, path.with_name(path.name + SET_ASIDE))
    if problems:
        raise CheckpointError(f"no checkpoint in {folder} can be resumed from: {problems[0]} (every one failed "
                              f"verification; they were set aside as *{SET_ASIDE}); run again without --resume, or with "
                              "--overwrite, to start afresh")
    return None


def load_checkpoint(accelerator, path: Path, model, optimizer, scheduler, sharding: str = "none") -> dict:
    """Replicated and ZeRO checkpoints resume with the process count that wrote them; FSDP ones with any (DCP
    reshards the weights and optimizer state; the data order is global, so only the per-process RNG streams start
    afresh)."""
    with reading(path, "the checkpoint"):
        return _load(accelerator, path, model, optimizer, scheduler, sharding)


def _tensors(path: Path):
    """A weights-only torch file of the checkpoint, a failure naming the file itself."""
    with reading(path, "tensors"):
        return torch.load(path, weights_only=True)


def _load(accelerator, path: Path, model, optimizer, scheduler, sharding: str) -> dict:
    state = json.loads((path / "state.json").read_text())
    written = state.get("sharding", "none")
    if written != sharding:
        raise InputError(f"{path}: written with sharding = {written!r}; this run has sharding = {sharding!r} (resume "
                         "with the setting that wrote it)")
    if sharding == "fsdp":
        load_sharded(path / SHARDED, model, optimizer)
        scheduler.load_state_dict(_tensors(path / "scheduler.pt"))
        rng = path / f"rng-rank{accelerator.process_index}.pt"
        if state["processes"] == accelerator.num_processes:
            set_rng_state(_tensors(rng))
        else:
            state["resharded_from"] = state["processes"]
        return state
    if state["processes"] != accelerator.num_processes:
        why = ("its optimizer state is partitioned per process, and connectorlab does not convert it (DeepSpeed's "
               "universal checkpoint)" if zero.is_zero(sharding) else "that would change the RNG streams")
        raise InputError(f"{path}: written by {state['processes']} processes; resuming with "
                         f"{accelerator.num_processes} is refused: {why}; exact resume needs the same count "
                         "(sharding: fsdp checkpoints reshard)")
    if zero.is_zero(sharding):
        zero.load(path / zero.ZERO_DIR, model)
    else:
        load_replicated(accelerator, path, model, optimizer)
    scheduler.load_state_dict(_tensors(path / "scheduler.pt"))
    set_rng_state(_tensors(path / f"rng-rank{accelerator.process_index}.pt"))
    return state


def load_replicated(accelerator, path: Path, model, optimizer) -> None:
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(accelerator.unwrap_model(model).named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise InputError(f"{path}: checkpoint lacks trainable parameters {missing[:5]}")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(_tensors(path / "optimizer.pt"))
