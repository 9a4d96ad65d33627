import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import SIZES, b64, png  # noqa: E402

from connectorlab.model.config import ModelConfig  # noqa: E402
from connectorlab.model.mllm import MultimodalLM  # noqa: E402
from connectorlab.model.tiny import make_bpe_tokenizer, make_llm, make_vision  # noqa: E402
from connectorlab.probe.generate import ProbeParams, generate  # noqa: E402
from connectorlab.probe.presets import make_random_presets  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny CLIP tower, SigLIP tower and Llama LM saved as HF checkpoints (built from configs, offline)."""
    root = tmp_path_factory.mktemp("tiny")
    tok = make_bpe_tokenizer(root / "tokenizer")
    make_vision(root / "clip", "clip", image_size=32, patch_size=8, hidden=32, layers=4)
    make_vision(root / "siglip", "siglip", image_size=32, patch_size=8, hidden=32, layers=2)
    make_llm(root / "llm", tok, hidden=64, layers=2)
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    generate(root / "probe", ProbeParams(seed=1, image_size=32, n_train=64, n_test=4))
    make_random_presets(root / "probe", root / "models", image_size=32, sizes=SIZES)
    return root


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    rows = []
    for q, (colour, answer) in enumerate([((255, 0, 0), "red"), ((0, 0, 255), "blue"), ((0, 255, 0), "green")]):
        opts = ["red", "blue", "green"]
        for k in range(3):
            rot = opts[k:] + opts[:k]
            rows.append({"index": q + k * 1_000_000, "question": "What colour is it?", "hint": "nan" if q else "A hint.",
                         "A": rot[0], "B": rot[1], "C": rot[2], "D": "", "answer": "ABC"[rot.index(answer)],
                         "category": ["image_scene", "ocr", "social_relation"][q], "image": b64(png(colour)),
                         "source": "t", "l2-category": "x", "comment": "", "split": "dev"})
    rows.append({**rows[0], "index": 7, "A": "", "B": "", "C": ""})  # malformed: no options
    pd.DataFrame(rows).to_csv(root / "mmb.tsv", sep="\t", index=False)
    mme = root / "MME"
    (mme / "count").mkdir(parents=True)
    (mme / "scene/images").mkdir(parents=True)
    (mme / "scene/questions_answers_YN").mkdir(parents=True)
    for i in range(2):
        png((i * 100, 50, 50)).save(mme / f"count/{i}.jpg")
        (mme / f"count/{i}.txt").write_text(f"Are there {i} dogs? Please answer yes or no.\tYes\n"
                                           f"Are there {i + 5} dogs? Please answer yes or no.\tNo\n")
        png((50, i * 100, 50)).save(mme / f"scene/images/{i}.png")
        (mme / f"scene/questions_answers_YN/{i}.txt").write_text("Is it a beach?  Please answer yes or no.\tNo\n"
                                                                  "Is it a field? Please answer yes or no.\tYes\n")
    (mme / "count/9.txt").write_text("orphan? Please answer yes or no.\tYes\nx? Please answer yes or no.\tNo\n")
    seed = root / "seed"
    seed.mkdir()
    questions = []
    for i in range(4):
        png((60 * i, 0, 0)).save(seed / f"{i}.jpg")
        questions.append({"question_id": str(100 + i), "question": "Which?", "choice_a": "x", "choice_b": "y",
                          "choice_c": "z", "choice_d": "w", "answer": "ABCD"[i], "data_id": f"{i}.jpg",
                          "data_type": "image", "question_type_id": 1 + i * 2})
    questions.append({**questions[0], "question_id": "v1", "data_type": "video", "question_type_id": 10,
                      "data_id": "v.mp4"})
    (seed / "seed.json").write_text(json.dumps({"questions": questions, "question_type": {"Scene Understanding": 1}}))
    return root


@pytest.fixture(scope="module")
def tiny_model(tiny_dir):
    torch.manual_seed(0)
    return MultimodalLM.build(ModelConfig(vision=str(tiny_dir / "clip"), llm=str(tiny_dir / "llm"), connector="avgpool",
                                          connector_options={"num_tokens": 4})).eval()


# ---- the `slow` marker is earned, not guessed: a test that starts a process (a launch, the CLI in a subprocess, a
# worker pool) and is not marked `slow` fails (CONNECTORLAB_RECORD_SPAWNS=FILE lists them instead), so that
# `pytest -m "not slow"` stays the in-process fast loop.
_SPAWNED = [0]


def pytest_configure(config):
    import multiprocessing.process
    import subprocess

    popen_init, process_start = subprocess.Popen.__init__, multiprocessing.process.BaseProcess.start

    def counted_popen(self, *args, **kwargs):
        _SPAWNED[0] += 1
        return popen_init(self, *args, **kwargs)

    def counted_start(self, *args, **kwargs):
        _SPAWNED[0] += 1
        return process_start(self, *args, **kwargs)

    subprocess.Popen.__init__ = counted_popen
    multiprocessing.process.BaseProcess.start = counted_start


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    if call.when == "setup":
        _SPAWNED[0] = 0  # module fixtures set up for this test count for it
    outcome = yield
    report = outcome.get_result()
    if call.when == "teardown" and _SPAWNED[0] and item.get_closest_marker("slow") is None and report.passed:
        record = os.environ.get("CONNECTORLAB_RECORD_SPAWNS")  # a file: list such tests instead of failing them
        if record:
            with open(record, "a") as f:
                f.write(item.nodeid + "\n")
            return
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} started {_SPAWNED[0]} process(es) but is not marked slow"
