"""Batched evaluation that resumes: predictions are appended as they are made, keyed by item.

Batches are formed over prompts sorted by length; that is safe because left-padded greedy
generation gives the answers of batch size 1 (tested), so batch size never changes a score. For the
same reason the batches can be dealt out to several processes (`accelerate launch -m connectorlab eval`):
each appends to its own `predictions.rankN.jsonl`, and the main process merges them into
`predictions.jsonl` before scoring and before a resumed run starts, whatever the number of processes.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch
from accelerate import PartialState
from PIL import Image

from ..data.images import ImageLoader
from ..data.skips import SkipReport
from ..errors import InputError
from ..language.processor import OverLength
from ..language.templates import without_image
from ..model.mllm import MultimodalLM
from ..utils.distributed import main_process_lock, on_main, process_state
from ..utils.io import atomic_write_json, atomic_write_text, fingerprint_folder, parse_jsonl, read_complete_jsonl
from ..utils.progress import progress_bar
from .base import Benchmark, data_fingerprint
from .result import RESULTS, EvalResult

log = logging.getLogger("connectorlab.eval")


def read_predictions(path: Path) -> dict[str, str]:
    """Complete lines only; a line cut short by a crash is dropped and the file truncated before it."""
    return {rec["key"]: rec["prediction"] for rec in read_complete_jsonl(path)}


RUN_FILES = ("run.json", "predictions.jsonl", "records.jsonl", RESULTS)
SHARD_GLOB = "predictions.rank*.jsonl"


def merge_shards(out: Path) -> int:
    """Append each process's complete prediction lines to predictions.jsonl, then remove its file. A crash between
    the two leaves lines that are read twice, with the same answer, never lost ones."""
    merged = 0
    read_complete_jsonl(out / "predictions.jsonl")  # a line cut short by a crash is trimmed before anything is appended
    shards = sorted(out.glob(SHARD_GLOB))
    if not shards:
        return 0
    with (out / "predictions.jsonl").open("a") as f:
        for shard in shards:
            for rec in read_complete_jsonl(shard):
                f.write(json.dumps(rec) + "\n")
                merged += 1
        f.flush()
        os.fsync(f.fileno())
    for shard in shards:
        shard.unlink()
    return merged


def run_identity(model: MultimodalLM, bench: Benchmark, blind: bool, max_new_tokens: int, run_info: dict | None) -> dict:
    """What the predictions depend on; the model's content is in it, not only its path."""
    info = {"benchmark": bench.name, "data": bench.source, "data_fingerprint": data_fingerprint(bench), "blind": blind,
            "max_new_tokens": max_new_tokens,
            "template": model.processor.template.name, **(run_info or {})}
    if getattr(model, "reduction", None) is not None:  # reduced answers never mix with the full model's
        info["reduction"] = model.reduction.label
    if model.pretrained_path is not None and "model_fingerprint" not in info:
        # Hashed once per loaded model (a 7B folder is ~14 GB), not once per benchmark and blind baseline.
        if getattr(model, "_fingerprint", None) is None:
            model._fingerprint = fingerprint_folder(model.pretrained_path)
        info["model_fingerprint"] = model._fingerprint
    return info


def identity_changes(before: dict, info: dict) -> list[str]:
    """`key: old -> new` for what makes the predictions differ. Paths are where the content was found, not what it
    is: the data (and a model with a fingerprint) are compared by content."""
    exempt = {"data"} | ({"model"} if before.get("model_fingerprint") and info.get("model_fingerprint") else set())
    return [f"{k}: {before.get(k, '(absent)')} -> {info.get(k, '(absent)')}"
            for k in sorted(before.keys() | info.keys()) if k not in exempt and before.get(k) != info.get(k)]


def claim_folder(out: Path, info: dict, overwrite: bool) -> None:
    info_path = out / "run.json"
    if info_path.exists() and overwrite:
        for path in [*(out / name for name in RUN_FILES), *out.glob(SHARD_GLOB)]:
            path.unlink(missing_ok=True)
    elif info_path.exists():
        before = json.loads(info_path.read_text())
        changed = identity_changes(before, info)
        if changed:
            raise InputError(f"{out} holds predictions of another run ({'; '.join(changed)}); use a new --out folder "
                             "or --overwrite to discard them")
    atomic_write_json(info_path, info)
    merge_shards(out)  # predictions of a sharded run that stopped, whatever its number of processes


def evaluate(model: MultimodalLM, bench: Benchmark, out: str | Path, batch_size: int = 8, max_new_tokens: int = 128,
             blind: bool = False, run_info: dict | None = None, show_progress: bool = True, workers: int = 4,
             overwrite: bool = False, state: PartialState | None = None) -> EvalResult:
    """Predictions already in `out` from the same run (same model content, data and settings) are reused and
    counted in `resumed_predictions`; another run's are refused. Under several processes (`state`, default the
    launch's), each answers every N-th batch and every process returns the same result."""
    for name, value, low in (("batch_size", batch_size, 1), ("max_new_tokens", max_new_tokens, 1), ("workers", workers, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"{name} = {value!r}: must be an integer >= {low}")
    out = Path(out)
    state = state or process_state()
    with main_process_lock(out, "evaluation", state):
        info = run_identity(model, bench, blind, max_new_tokens, run_info)
        on_main(state, lambda: claim_folder(out, info, overwrite))
        result = _evaluate(model, bench, out, info, batch_size, max_new_tokens, blind, show_progress, workers, state)
        state.wait_for_everyone()
        return result if state.is_main_process else EvalResult.read(out)


class UnreadableImages:
    """Image loaders that never raise: an image that does not decode becomes a blank stand-in (so that the batch still
    stacks) and is recorded, and the items that show it are then skipped, not answered."""

    def __init__(self):
        self.failed: dict[int, str] = {}  # id of a wrapped loader -> why it failed

    def wrap(self, load):
        def safe():
            try:
                return load()
            except (OSError, SyntaxError, ValueError) as err:  # PIL raises all three for broken data
                self.failed[id(safe)] = f"cannot decode image ({err})"
                return Image.new("RGB", (32, 32))
        return safe

    def reason(self, load) -> str | None:
        return self.failed.get(id(load))


def distinct_images(chunk: list, guard: UnreadableImages) -> tuple[list, list[int]]:
    """The image loaders of a batch's distinct images, and for each item the position of its image among them."""
    first: dict[str, int] = {}
    loads, which = [], []
    for _, it, _ in chunk:
        key = it.image_key if it.image_key is not None else f"item:{it.key}"
        if key not in first:
            first[key] = len(loads)
            loads.append(guard.wrap(it.load_image))
        which.append(first[key])
    return loads, which


def _evaluate(model: MultimodalLM, bench: Benchmark, out: Path, info: dict, batch_size: int, max_new_tokens: int,
              blind: bool, show_progress: bool, workers: int, state: PartialState) -> EvalResult | None:
    pred_path = out / "predictions.jsonl"
    preds = {rec["key"]: rec["prediction"] for rec in parse_jsonl(pred_path.read_text(), pred_path)} \
        if pred_path.exists() else {}  # complete: the main process merged and trimmed it
    resumed = len(preds)
    if resumed:
        log.info("reusing %d predictions in %s made by the same run (%s)", resumed, pred_path,
                 info.get("model_fingerprint", info.get("model", "model")))
    skips = SkipReport()
    todo = []
    left = [it for it in bench.items if it.key not in preds]
    prompts = [without_image(it.prompt) if blind else it.prompt for it in left]
    for it, ids in zip(left, model.processor.encode_prompts(prompts, num_images=0 if blind else 1), strict=True):
        if isinstance(ids, OverLength):
            skips.skip("over_length", it.key, str(ids))
            continue
        if isinstance(ids, ValueError):
            raise ids
        todo.append((len(ids), it, ids))
    todo.sort(key=lambda t: (t[0], t[1].image_key or ""))  # copies of one image side by side: encoded once
    model.eval()
    t0 = time.perf_counter()
    world, rank = state.num_processes, state.process_index
    chunks = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)][rank::world]  # dealt out in turn
    own = pred_path if world == 1 else out / f"predictions.rank{rank}.jsonl"
    with progress_bar(show_progress and state.is_main_process) as bar, own.open("a") as f, \
            ImageLoader(model.image_transform, workers) as loader:
        # Each chunk's images, decoded while the chunk before it generates (none for the blind baseline).
        guard = UnreadableImages()
        groups = [distinct_images(chunk, guard) for chunk in chunks]
        images = loader.stream([] if blind else loads for loads, _ in groups)
        shown = (len(bench.items), resumed) if world == 1 else (sum(map(len, chunks)), 0)  # this process's share
        task = bar.add_task(f"eval {bench.name}{' (blind)' if blind else ''}", total=shown[0], completed=shown[1])
        for chunk, (loads, which), pixels in zip(chunks, groups, images, strict=True):
            keep = [i for i, w in enumerate(which) if pixels is None or guard.reason(loads[w]) is None]
            for i in sorted(set(range(len(chunk))) - set(keep)):
                skips.skip("unreadable_image", chunk[i][1].key, guard.reason(loads[which[i]]), bench.source)
            bar.advance(task, len(chunk) - len(keep))
            chunk, which = [chunk[i] for i in keep], [which[i] for i in keep]
            if not chunk:
                continue
            with torch.inference_mode():
                features = None if pixels is None else model.encode_images(pixels.to(model.lm_head.weight.device))
                outs = model.generate([ids for _, _, ids in chunk], max_new_tokens=max_new_tokens, image_features=features,
                                      image_index=None if pixels is None else which)
            for (_, it, _), new in zip(chunk, outs, strict=True):
                text = model.processor.decode(new)
                preds[it.key] = text
                f.write(json.dumps({"key": it.key, "prediction": text}) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.advance(task, len(chunk))
    elapsed = time.perf_counter() - t0
    if world > 1:
        state.wait_for_everyone()
        if not state.is_main_process:
            return None
        merge_shards(out)
        preds = read_predictions(pred_path)
    scores = bench.score(preds)
    if skips.counts.get("unreadable_image"):  # those questions were not answered: the score is not the benchmark's
        scores = {**scores, "complete": False, "unreadable_images": skips.counts["unreadable_image"]}
    atomic_write_text(out / "records.jsonl", "".join(
        json.dumps({"key": it.key, "prompt": it.prompt, "prediction": preds.get(it.key), **it.meta}, default=str) + "\n"
        for it in bench.items))
    answered = len(todo) - skips.counts["unreadable_image"]
    result = EvalResult(scores, len(bench.items), answered, resumed, world, elapsed, bench.skips.to_dict(), skips.to_dict(),
                        info, out)
    atomic_write_json(out / RESULTS, result.to_dict())
    return result
