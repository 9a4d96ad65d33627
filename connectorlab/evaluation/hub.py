"""Benchmarks as lmms-eval reads them: the Hub's datasets (lmms-lab/MME, lmms-lab/MMBench, lmms-lab/SEED-Bench) through
the `datasets` library, or local parquet files of the same schema.

Each row becomes what the release-file loader makes of the same question (same key, prompt, meta and image bytes),
and the same official scorer scores it, so a score does not depend on where the questions came from. Images are
kept as their stored bytes (`Image(decode=False)`) and decoded like the release files are.
"""
from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image

from ..data.skips import DataError, SkipReport
from ..errors import InputError
from .base import Benchmark, EvalItem, bytes_key
from .benchmarks.mmbench import LETTERS, mmbench_from_frame
from .benchmarks.mme import OFFICIAL, llava_prompt, mme_benchmark
from .benchmarks.seedbench import seed_benchmark


def is_hub_source(data: str | Path) -> bool:
    """A local parquet file or folder of them, or an `owner/name` that is not a path here."""
    path = Path(data)
    if path.exists():
        return path.suffix == ".parquet" or (path.is_dir() and any(path.rglob("*.parquet")))
    return str(data).count("/") == 1 and not str(data).startswith((".", "/"))


@dataclass(frozen=True)
class HubSource:
    """Where lmms-eval reads a benchmark on the Hub, what a row must hold, and how rows become our benchmark."""
    dataset: str
    subset: str | None
    split: str
    required: tuple[str, ...]
    from_rows: Callable[..., Benchmark]  # (rows, source label, strict, task_types, task_section)
    image_list: bool = False  # the image column holds a list of images (SEED-Bench)


def load_rows(hub: HubSource, name: str, source: str | Path, subset: str | None = None, split: str | None = None):
    try:
        import datasets
    except ImportError:
        raise InputError("benchmarks from the Hub need the datasets package: pip install 'connectorlab[hub]'") from None
    path = Path(source)
    if path.exists():
        files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
        empty = [f for f in files if parquet_rows(f) == 0]
        if empty:
            raise DataError(f"{empty[0]}: a parquet file with no rows ({len(empty)} of {len(files)} file(s) are empty)")
        rows = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    else:
        rows = datasets.load_dataset(str(source), subset, split=split)
    missing = [c for c in hub.required if c not in rows.column_names]
    if missing:
        raise DataError(f"{source}: not a {name} dataset as lmms-eval reads it: no column(s) {', '.join(missing)} "
                        f"(columns: {', '.join(rows.column_names)})")
    image = datasets.Sequence(datasets.Image(decode=False)) if hub.image_list else datasets.Image(decode=False)
    return rows.cast_column("image", image)


def parquet_rows(path: Path) -> int:
    """The row count from the file's footer (read before `datasets`, which fails on an empty file with its own
    traceback); a file that is not parquet is named."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable parquet file ({err})") from None


def image_bytes(value) -> bytes | None:
    if isinstance(value, dict):
        return value.get("bytes") or (Path(value["path"]).read_bytes() if value.get("path") else None)
    return None


def from_bytes(data: bytes):
    def load():
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    return load


def load_hub_benchmark(hub: HubSource, name: str, source: str | Path, subset: str | None = None,
                       split: str | None = None, strict: bool = False, task_types: str | Path | None = None,
                       task_section: str | None = None) -> Benchmark:
    if not Path(source).exists():
        subset, split = subset or hub.subset, split or hub.split
    rows = load_rows(hub, name, source, subset, split)
    label = str(source) if Path(source).exists() else f"{source} [{subset or ''}/{split}]"
    return hub.from_rows(rows, label, strict, task_types, task_section)


def mmbench_frame(rows) -> pd.DataFrame:
    """The dataset as the release TSV reads: string cells (an absent option empty), the image as base64."""
    records = []
    for row in rows:
        rec = {k.lower() if k not in LETTERS else k: ("" if v is None else str(v)) for k, v in row.items() if k != "image"}
        data = image_bytes(row["image"])
        rec["image"] = base64.b64encode(data).decode() if data else ""
        records.append(rec)
    return pd.DataFrame(records)


def mme_from_rows(rows, source: str, strict: bool, task_types, task_section=None) -> Benchmark:
    """Rows keyed by question_id (`<subtask>/<image file>`), two questions per image in dataset order."""
    skips = SkipReport(strict=strict)
    items, order, count = [], {}, {}
    for row in rows:
        sub, qid = row["category"], row["question_id"]
        if sub not in OFFICIAL:
            skips.skip("malformed_row", qid, f"field 'category' {sub!r} is not an MME sub-task", source)
            continue
        data = image_bytes(row["image"])
        if not data:
            skips.skip("missing_image", qid, "field 'image' is empty", source)
            continue
        image = qid.rsplit("/", 1)[-1]
        q_no = count[(sub, image)] = count.get((sub, image), -1) + 1
        key = f"{sub}/{image}/{q_no}"
        items.append(EvalItem(key, llava_prompt(row["question"]), from_bytes(data),
                              {"subtask": sub, "image": image, "question": row["question"], "answer": row["answer"].strip()},
                              image_key=bytes_key(data)))
        order.setdefault(sub, []).append(key)
    if not items:
        raise DataError(f"{source}: no MME questions")
    order = {s: sorted(keys, key=lambda k: (k.rsplit("/", 1)[0], int(k.rsplit("/", 1)[1]))) for s, keys in order.items()}
    return mme_benchmark(source, items, {s: order[s] for s in sorted(order)}, skips, task_types)


def seed_from_rows(rows, source: str, strict: bool, task_types, task_section=None) -> Benchmark:
    questions, images = [], {}
    for row in rows:
        questions.append({k: v for k, v in row.items() if k != "image"})
        data = [image_bytes(v) for v in (row["image"] or [])]
        images[str(row["question_id"])] = data[0] if data and data[0] else None

    def image_of(q: dict):
        data = images.get(str(q.get("question_id")))
        return (from_bytes(data), bytes_key(data)) if data else None

    return seed_benchmark(source, questions, {}, image_of, strict, task_types, lambda q: "field 'image' is empty")


def mmbench_from_rows(rows, source: str, strict: bool, task_types, task_section=None) -> Benchmark:
    return mmbench_from_frame(mmbench_frame(rows), source, strict, task_section, task_types)


# lmms-eval's datasets, with the subset and split it reads by default
MMBENCH = HubSource("lmms-lab/MMBench", "en", "dev", ("index", "question", "answer", "category", "image", *LETTERS),
                    mmbench_from_rows)
MME = HubSource("lmms-lab/MME", None, "test", ("question_id", "question", "answer", "category", "image"), mme_from_rows)
SEED_BENCH = HubSource("lmms-lab/SEED-Bench", None, "test",
                       ("question_id", "question", "answer", "question_type_id", "image", "choice_a", "choice_b"),
                       seed_from_rows, image_list=True)
