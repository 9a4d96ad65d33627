"""Benchmarks from the Hub's datasets (the schema lmms-eval reads), tested offline on local parquet files made from the
same questions as the release-file fixtures: the same items (keys, prompts, meta, pixels) and the same scores."""
import base64
import json

import datasets
import numpy as np
import pandas as pd
import pytest
from helpers import run_module as cli

from connectorlab.evaluation.benchmarks.mmbench import load_mmbench
from connectorlab.evaluation.benchmarks.mme import load_mme
from connectorlab.evaluation.benchmarks.seedbench import load_seedbench
from connectorlab.evaluation.registry import load_benchmark


def to_parquet(records: list[dict], features: datasets.Features, path):
    datasets.Dataset.from_list(records, features=features).to_parquet(str(path))
    return path


def mmbench_parquet(tsv, path):
    df = pd.read_csv(tsv, sep="\t", keep_default_na=False, dtype=str)
    records = [{"index": int(r["index"]), "question": r["question"], "hint": r["hint"], "answer": r["answer"],
                **{k: (r[k] or None) for k in "ABCD"}, "category": r["category"],
                "image": {"bytes": base64.b64decode(r["image"]), "path": None}, "source": r["source"],
                "L2-category": r["l2-category"], "comment": r["comment"], "split": r["split"]} for _, r in df.iterrows()]
    text = datasets.Value("string")
    features = datasets.Features({"index": datasets.Value("int64"), "question": text, "hint": text, "answer": text,
                                  **dict.fromkeys("ABCD", text), "category": text, "image": datasets.Image(), "source": text,
                                  "L2-category": text, "comment": text, "split": text})
    return to_parquet(records, features, path)


def mme_parquet(folder, path):
    records = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        qdir = sub / "questions_answers_YN" if (sub / "questions_answers_YN").is_dir() else sub
        idir = sub / "images" if (sub / "images").is_dir() else sub
        for txt in sorted(qdir.glob("*.txt")):
            image = next((p for p in idir.glob(txt.stem + ".*") if p.suffix != ".txt"), None)
            if image is None:
                continue
            for line in txt.read_text().splitlines():
                question, answer = line.split("\t")
                records.append({"question_id": f"{sub.name}/{image.name}", "image": {"bytes": image.read_bytes(), "path": None},
                                "question": question, "answer": answer, "category": sub.name})
    text = datasets.Value("string")
    features = datasets.Features({"question_id": text, "image": datasets.Image(), "question": text, "answer": text,
                                  "category": text})
    return to_parquet(records, features, path)


def seed_parquet(folder, path):
    questions = json.loads((folder / "seed.json").read_text())["questions"]
    records = [{**{k: str(q[k]) for k in ("answer", "choice_a", "choice_b", "choice_c", "choice_d", "data_id", "data_type",
                                           "question", "question_id")},
                "question_type_id": int(q["question_type_id"]),
                "image": [{"bytes": (folder / q["data_id"]).read_bytes(), "path": None}] if q["data_type"] == "image" else [],
                "segment": None} for q in questions]
    text = datasets.Value("string")
    features = datasets.Features({**{k: text for k in ("answer", "choice_a", "choice_b", "choice_c", "choice_d", "data_id",
                                                       "data_type", "question", "question_id")},
                                  "question_type_id": datasets.Value("int64"), "image": datasets.Sequence(datasets.Image()),
                                  "segment": datasets.Sequence(datasets.Value("int64"))})
    return to_parquet(records, features, path)


@pytest.fixture(scope="module")
def pairs(fixtures, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("hub")
    return {
        "mmbench": (load_mmbench(fixtures / "mmb.tsv"),
                    load_benchmark("mmbench", mmbench_parquet(fixtures / "mmb.tsv", root / "mmbench.parquet"))),
        "mme": (load_mme(fixtures / "MME"), load_benchmark("mme", mme_parquet(fixtures / "MME", root / "mme.parquet"))),
        "seedbench": (load_seedbench(fixtures / "seed/seed.json"),
                      load_benchmark("seedbench", seed_parquet(fixtures / "seed", root / "seed.parquet"))),
    }


@pytest.mark.parametrize("name", ["mmbench", "mme", "seedbench"])
def test_hub_rows_give_the_release_loaders_items(pairs, name):
    release, hub = pairs[name]
    assert [it.key for it in hub.items] == [it.key for it in release.items]
    for a, b in zip(release.items, hub.items, strict=True):
        assert (a.prompt, a.meta) == (b.prompt, b.meta)
        assert np.array_equal(np.asarray(a.load_image()), np.asarray(b.load_image()))
    # the same rows skipped for the same reasons (MME's orphan question file has no image, so no row on the Hub)
    assert dict(hub.skips.counts) == {k: v for k, v in release.skips.counts.items() if k != "missing_image" or name != "mme"}


@pytest.mark.parametrize("name", ["mmbench", "mme", "seedbench"])
def test_hub_rows_score_as_the_release_files(pairs, name):
    release, hub = pairs[name]
    preds = {it.key: ("Yes" if i % 3 else "No") if name == "mme" else "ABCD"[i % 4] for i, it in enumerate(release.items)}
    a, b = release.score(preds), hub.score(preds)
    for key in ("task_types", "categories", "subtasks", "dimensions", "circular", "perception", "image"):
        assert a.get(key) == b.get(key), key


@pytest.mark.slow
def test_eval_cli_reads_a_hub_parquet(fixtures, tiny_model, tmp_path):  # noqa: F811
    tiny_model.save_pretrained(tmp_path / "model")
    data = mme_parquet(fixtures / "MME", tmp_path / "mme.parquet")
    res = cli("eval", "--model", str(tmp_path / "model"), "--benchmark", "mme", "--data", str(data), "--out",
              str(tmp_path / "ev"), "--max-new-tokens", "2", "--allow-incomplete")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((tmp_path / "ev/results.json").read_text())["scores"]["subtask_details"]["count"]["questions"] == 4


def test_a_dataset_of_another_schema_is_named(tmp_path):
    path = to_parquet([{"q": "x"}], datasets.Features({"q": datasets.Value("string")}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match=r"not a mme dataset as lmms-eval reads it: no column\(s\) question_id"):
        load_benchmark("mme", path)
