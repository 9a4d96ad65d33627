"""Batched evaluation that resumes: predictions are appended as they are made, keyed by item.

Batches are formed over prompts sorted by length; that is safe because left-padded greedy
generation gives the answers of batch size 1 (tested), so batch size never changes a score.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from ..data.images import ImageLoader
from ..data.skips import SkipReport
from ..language.processor import OverLength
from ..model.mllm import MultimodalLM
from ..utils.io import atomic_write_json, atomic_write_text
from ..utils.progress import progress_bar
from .base import Benchmark
from .benchmarks.mmbench import load_mmbench
from .benchmarks.mme import load_mme
from .benchmarks.seedbench import load_seedbench

BENCHMARKS = ("mmbench", "mme", "seedbench")


def load_benchmark(name: str, data: str | Path, image_folder: str | Path | None = None, strict: bool = False,
                   task_types: str | Path | None = None, task_section: str | None = None) -> Benchmark:
    if name == "mmbench":
        return load_mmbench(data, strict, task_section or "mmbench", task_types)
    if name == "mme":
        return load_mme(data, strict, task_types)
    if name == "seedbench":
        return load_seedbench(data, image_folder, strict, task_types)
    raise ValueError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}")


def read_predictions(path: Path) -> dict[str, str]:
    """Complete lines only; a line cut short by a crash is dropped and the file truncated before it."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    preds = {}
    for line in data[:end].decode().splitlines():
        if line.strip():
            rec = json.loads(line)
            preds[rec["key"]] = rec["prediction"]
    return preds


def evaluate(model: MultimodalLM, bench: Benchmark, out: str | Path, batch_size: int = 8, max_new_tokens: int = 128,
             blind: bool = False, run_info: dict | None = None, show_progress: bool = True, workers: int = 4) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = {"benchmark": bench.name, "data": bench.source, "blind": blind, "max_new_tokens": max_new_tokens,
            "template": model.processor.template.name, **(run_info or {})}
    info_path = out / "run.json"
    if info_path.exists():
        before = json.loads(info_path.read_text())
        if before != info:
            raise ValueError(f"{out} holds predictions of another run ({before}); use a new --out folder")
    atomic_write_json(info_path, info)
    pred_path = out / "predictions.jsonl"
    preds = read_predictions(pred_path)
    resumed = len(preds)
    skips = SkipReport()
    todo = []
    for it in bench.items:
        if it.key in preds:
            continue
        prompt = it.prompt.replace("<image>\n", "").replace("<image>", "") if blind else it.prompt
        try:
            ids = model.processor.encode_prompt(prompt, num_images=0 if blind else 1)
        except OverLength as err:
            skips.skip("over_length", it.key, str(err))
            continue
        todo.append((len(ids), it, ids))
    todo.sort(key=lambda t: t[0])
    model.eval()
    t0 = time.perf_counter()
    chunks = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    with progress_bar(show_progress) as bar, pred_path.open("a") as f, ImageLoader(model.image_transform, workers) as loader:
        # Each chunk's images, decoded while the chunk before it generates (none for the blind baseline).
        images = loader.stream([] if blind else [it.load_image for _, it, _ in chunk] for chunk in chunks)
        task = bar.add_task(f"eval {bench.name}{' (blind)' if blind else ''}", total=len(bench.items), completed=resumed)
        for chunk, pixels in zip(chunks, images, strict=True):
            with torch.inference_mode():
                outs = model.generate([ids for _, _, ids in chunk], pixels, max_new_tokens)
            for (_, it, _), new in zip(chunk, outs, strict=True):
                text = model.processor.decode(new)
                preds[it.key] = text
                f.write(json.dumps({"key": it.key, "prediction": text}) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.advance(task, len(chunk))
    elapsed = time.perf_counter() - t0
    scores = bench.score(preds)
    atomic_write_text(out / "records.jsonl", "".join(
        json.dumps({"key": it.key, "prompt": it.prompt, "prediction": preds.get(it.key), **it.meta}, default=str) + "\n"
        for it in bench.items))
    result = {**info, "items": len(bench.items), "answered_now": len(todo), "resumed_predictions": resumed,
              "skipped_items": bench.skips.to_dict(), "skipped_prompts": skips.to_dict(), "eval_seconds": elapsed,
              "scores": scores}
    atomic_write_json(out / "results.json", result)
    return result
