"""`connectorlab probe generate`: a seeded visual QA benchmark that isolates perception granularity.

Outputs the formats the real pipeline reads, so probe runs use the same code as real runs:
`pretrain.json` (LLaVA captions), `finetune.json` (LLaVA instructions), `test.tsv` (MMBench layout
with circular copies; category = sub-task, l2-category = task type) and `probe.json` (parameters
and counts).
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from ..errors import InputError
from ..evaluation.base import mc_prompt
from ..evaluation.task_types import load_mapping
from ..language.templates import IMAGE_LINE, with_image
from ..utils.io import atomic_write_json, atomic_write_text
from ..utils.validation import NON_NEGATIVE_INT, POSITIVE_INT, Range, check_ranges
from .scene import (
    BACKGROUNDS,
    BIG_COLOURS,
    COLOURS,
    GLYPHS,
    MAX_SMALL,
    PLACES,
    QUALITIES,
    RELATIONS,
    SCENES,
    SHAPES,
    SMALL_COLOURS,
    TEXTURES,
    SceneSpec,
    noise_seed,
    render,
    sample_scene,
)

NUMBERS = ("one", "two", "three", "four", "five", "six")
TASK_SECTION = "probe"  # the probe's sub-tasks and their task types: a section of evaluation/task_types.yaml
L2_NAMES = {"coarse": "coarse_perception", "fine": "finegrained_perception", "reasoning": "reasoning"}


def task_types() -> dict[str, str]:
    return {name: entry["type"] for name, entry in load_mapping(TASK_SECTION).items()}


@dataclass
class ProbeParams:
    seed: int = 0
    image_size: int = 64
    # Side of a small shape, as a fraction of the image side (the glyph tile is twice as wide). At 0.1 a small shape is
    # half a patch of the tiny ViT at the lowest study resolution (32 px, patch 8); the tile's glyph is set apart by
    # its stripes' period (scene.GLYPH_PERIOD), not by this scale.
    object_scale: float = 0.1
    # At most this many decoy specks per image (at least half as many). Measured on the tiny presets: with up to 8,
    # the MLP connector's fine-grained score stayed near chance in most runs (the binding plateau); with up to 2 it
    # left the plateau within the first half of fine-tuning in every run tried, and average pooling stayed at chance.
    clutter: int = 2
    n_train: int = 2000
    n_test: int = 100  # eleven questions each: 400 coarse and fine, 300 reasoning questions
    # Each fine-tuning conversation asks this many questions of its image...
    questions_per_record: int = 4
    # ...of which this many fine-grained ones, drawn among the four (measured at seed 0: with all four in every record,
    # two thirds of the answers, avgpool, which cannot learn them, was 6.5 to 15.5 points below mlp on coarse
    # perception; with two of four, at most 3.4 points below in the three runs tried)...
    fine_per_record: float = 2  # a fraction: one more in that share of the records
    # ...this many of them in the benchmark's multiple-choice prompt (options and instruction: about 28 tokens more than
    # the short question), the others short, as LLaVA-1.5's mix holds both kinds...
    mc_per_record: int = 1
    # ...in this share of the records (the others ask every question short): with the prompt in every record it is
    # 40 % of the text, and images are a smaller share of each sequence than in the paper's fine-tuning.
    mc_share: float = 0.5

    def __post_init__(self) -> None:
        check_ranges(self, {"seed": NON_NEGATIVE_INT, "image_size": Range(8, integer=True), "clutter": NON_NEGATIVE_INT,
                            "object_scale": Range(0, 0.5, low_open=True), "n_train": POSITIVE_INT,
                            "n_test": POSITIVE_INT, "questions_per_record": POSITIVE_INT,
                            "fine_per_record": Range(0), "mc_share": Range(0, 1),
                            "mc_per_record": NON_NEGATIVE_INT}, "probe")


@dataclass
class Question:
    subtask: str
    question: str
    options: list[str]
    answer: str


def _options(rng: random.Random, answer: str, pool) -> list[str]:
    others = [o for o in pool if o != answer]
    opts = [answer, *rng.sample(others, min(3, len(others)))]
    rng.shuffle(opts)
    return opts


def questions_for(spec: SceneSpec, rng: random.Random) -> list[Question]:
    """Coarse: whole-image properties. Fine: the small things (their colour, told apart from specks of another
    colour; how many there are; the glyph on the tile and where the tile is). Reasoning: relations between the two
    big shapes (place, size, and a negation over shape that asks for a colour)."""
    a, b = spec.big
    negated = rng.choice(spec.big)
    other = b if negated is a else a
    small, tile = spec.small, spec.tile
    q = Question
    return [
        q("scene", "What kind of scene is this?", _options(rng, spec.scene, SCENES), spec.scene),
        q("background", "What colour is the background?", _options(rng, spec.background, BACKGROUNDS), spec.background),
        q("texture", "What pattern covers the background?", _options(rng, spec.texture, TEXTURES), spec.texture),
        q("quality", "What is the quality of the image?", _options(rng, spec.quality, QUALITIES), spec.quality),
        q("colour", "What colour are the small shapes?", _options(rng, small[0].colour, SMALL_COLOURS), small[0].colour),
        q("count", "How many small shapes are there?", _options(rng, NUMBERS[len(small) - 1], NUMBERS[:MAX_SMALL]),
          NUMBERS[len(small) - 1]),
        q("glyph", "What pattern is on the tile?", _options(rng, tile.shape, GLYPHS), tile.shape),
        q("locate", "Where is the tile?", _options(rng, tile.place, PLACES), tile.place),
        q("relation", f"Where is the {a.colour} {a.shape} relative to the {b.colour} {b.shape}?",
          _options(rng, spec.relation, RELATIONS), spec.relation),
        q("comparison", "What colour is the larger of the two big shapes?",
          _options(rng, spec.larger.colour, BIG_COLOURS), spec.larger.colour),
        q("logic", f"What colour is the big shape that is not a {negated.shape}?",
          _options(rng, other.colour, BIG_COLOURS), other.colour),
    ]


def caption(spec: SceneSpec) -> str:
    a, b = spec.big
    n, s = len(spec.small), spec.small[0]  # the small things first, so stage 1 asks the connector to keep them apart
    return (f"{NUMBERS[n - 1]} small {s.colour} shape{'s' if n > 1 else ''} and a {spec.tile.shape} tile in "
            f"the {spec.tile.place} of a {spec.quality} {spec.background} {spec.scene} scene "
            f"with {spec.texture} . the {a.colour} {a.shape} is {spec.relation} the {b.colour} {b.shape} and the "
            f"{spec.larger.colour} one is larger .")


def instruction(qs: list[Question], params: ProbeParams, types: dict[str, str], rng: random.Random) -> list[dict]:
    """One fine-tuning conversation: `fine_per_record` of the image's fine-grained questions and others up to the
    record's count; in a `mc_share` of the records the first `mc_per_record` in the benchmark's multiple-choice prompt
    (as the evaluation runner builds it, LLaVA's MMBench prompt), the rest short."""
    fine = [q for q in qs if types[q.subtask] == "fine"]
    rest = [q for q in qs if types[q.subtask] != "fine"]
    whole, part = divmod(params.fine_per_record, 1)
    n_fine = min(len(fine), int(whole) + (part > 0 and rng.random() < part), params.questions_per_record)
    fine = fine if n_fine == len(fine) else rng.sample(fine, n_fine)
    others = max(0, min(len(rest), params.questions_per_record - n_fine))
    qs = fine + rng.sample(rest, others)
    rng.shuffle(qs)
    mc = params.mc_per_record if params.mc_share >= 1 or rng.random() < params.mc_share else 0
    conv = []
    for k, q in enumerate(qs):
        prompt = mc_prompt(q.question, dict(zip("ABCD", q.options, strict=False))) if k < mc \
            else with_image(q.question)
        conv += [{"from": "human", "value": prompt if k == 0 else prompt.removeprefix(IMAGE_LINE)},
                 {"from": "gpt", "value": q.answer}]
    return conv


def _png_b64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _draw(job: tuple[SceneSpec, int | None, int, Path | None]) -> str | None:
    """One image: saved to its path, or returned as a base64 PNG where it has none."""
    spec, noise, side, path = job
    image = render(spec, side, noise)
    if path is None:
        return _png_b64(image)
    image.save(path)
    return None


def draw_images(jobs: list, progress=None, workers: int | None = None) -> list[str | None]:
    """Drawing is most of the probe's generation time, each image is independent, and numpy and PIL release the GIL
    while they draw: one thread per core."""
    workers = workers or min(os.cpu_count() or 1, 8, len(jobs) // 200 + 1)
    task = progress.add_task("drawing probe", total=len(jobs)) if progress else None
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(ThreadPoolExecutor(workers, thread_name_prefix="probe-draw"))
            results = pool.map(_draw, jobs)
        else:
            results = map(_draw, jobs)
        drawn = []
        for result in results:
            drawn.append(result)
            if progress:
                progress.advance(task)
    return drawn


def generate(out: str | Path, params: ProbeParams = ProbeParams(), progress=None) -> dict:
    """Write the probe to `out`; the same params always give byte-identical files."""
    out = Path(out)
    if params.clutter < 0:
        raise InputError(f"clutter (specks per image) must be >= 0, got {params.clutter}")
    if not 0.02 <= params.object_scale <= 0.2:
        raise InputError(f"object_scale must lie in [0.02, 0.2], got {params.object_scale}")
    (out / "images" / "train").mkdir(parents=True, exist_ok=True)
    rng = random.Random(params.seed)
    types = task_types()
    pretrain, finetune, rows, annotations, jobs = [], [], [], [], []
    for i in range(params.n_train):
        spec = sample_scene(rng, params.object_scale, params.clutter)
        rel = f"images/train/{i:06d}.png"
        jobs.append((spec, noise_seed(spec, rng), params.image_size, out / rel))
        annotations.append({"image": rel, **asdict(spec)})
        pretrain.append({"id": f"train-{i}", "image": rel, "conversations": [
            {"from": "human", "value": with_image("Describe the image.")}, {"from": "gpt", "value": caption(spec)}]})
        qs = questions_for(spec, rng)
        unmapped = {q.subtask for q in qs} - set(types)
        if unmapped:
            raise InputError(f"probe sub-task(s) {sorted(unmapped)} have no task type in the {TASK_SECTION!r} section "
                             "of evaluation/task_types.yaml")
        finetune.append({"id": f"train-{i}", "image": rel, "conversations": instruction(qs, params, types, rng)})
    index, test_rows = 0, []
    for i in range(params.n_test):
        spec = sample_scene(rng, params.object_scale, params.clutter)
        jobs.append((spec, noise_seed(spec, rng), params.image_size, None))
        test_rows.append([])
        for q in questions_for(spec, rng):
            n = len(q.options)
            for k in range(n):  # circular copies: options rotate, the gold letter moves
                opts = q.options[k:] + q.options[:k]
                test_rows[-1].append({"index": index + k * 1_000_000, "question": q.question, "hint": "",
                                      **{letter: (opts[j] if j < n else "") for j, letter in enumerate("ABCD")},
                                      "answer": "ABCD"[opts.index(q.answer)], "category": q.subtask, "image": None,
                                      "source": f"probe-test-{i}", "l2-category": L2_NAMES[types[q.subtask]],
                                      "comment": "", "split": "dev"})
            index += 1
    drawn = draw_images(jobs, progress)
    for image, image_rows in zip(drawn[params.n_train:], test_rows, strict=True):
        rows += [{**row, "image": image} for row in image_rows]
    atomic_write_json(out / "annotations.json", annotations)  # dense targets for the tower's pre-training
    atomic_write_json(out / "pretrain.json", pretrain)
    atomic_write_json(out / "finetune.json", finetune)
    atomic_write_text(out / "test.tsv", pd.DataFrame(rows).to_csv(sep="\t", index=False))
    counts = pd.DataFrame([r for r in rows if r["index"] < 1_000_000]).groupby("category").size().to_dict()
    meta = {"params": asdict(params), "task_types": types, "test_questions": index,
            "test_rows": len(rows), "test_questions_per_subtask": counts, "train_images": params.n_train}
    atomic_write_json(out / "probe.json", meta)
    return meta


def vocabulary(texts: list[str]) -> list[str]:
    """Every word the probe and the templates use, split as the word-level tokenizer splits."""
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    words: dict[str, None] = {}
    for text in texts:
        for w, _ in pre.pre_tokenize_str(text):
            words.setdefault(w, None)
    return list(words)


def probe_texts(out: str | Path) -> list[str]:
    out = Path(out)
    texts = []
    for name in ("pretrain.json", "finetune.json"):
        for rec in json.loads((out / name).read_text()):
            texts += [t["value"] for t in rec["conversations"]]
    texts += [" ".join([*COLOURS, *BACKGROUNDS, *SHAPES, *NUMBERS, *GLYPHS]), "USER : ASSISTANT :"]
    return texts
