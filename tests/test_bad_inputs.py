"""Every bad input we know of, each asserting its named error, its counted skip or its refused reuse.

Training, evaluation and scoring, files and messages: one case per situation a user meets (a corrupt image in a
large dataset, a re-run into an old folder, a model retrained in place, a half-written prediction file).
"""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import typer
import yaml
from helpers import ROOT, main_in_process, write_config
from PIL import Image

from connectorlab.data.llava import load_samples
from connectorlab.data.skips import DataError, SkipReport
from connectorlab.evaluation.benchmarks.mmbench import load_mmbench, predictions_table
from connectorlab.evaluation.benchmarks.mme import join_llava_answers, read_tool_folder
from connectorlab.evaluation.runner import evaluate
from connectorlab.language.processor import MultimodalProcessor
from connectorlab.model.config import ModelConfig
from connectorlab.model.mllm import MultimodalLM
from connectorlab.probe.generate import ProbeParams, generate
from connectorlab.training.config import TrainConfig
from connectorlab.training.run_folder import RunMismatch
from connectorlab.training.trainer import run_stage, train
from connectorlab.utils.io import BusyError, DiskFullError, atomic_dir, atomic_write_json, exclusive
from connectorlab.utils.validation import ConfigError


def config(toy: Path, out: Path, **extra) -> TrainConfig:
    return TrainConfig.from_dict(yaml.safe_load(write_config(toy, out, **extra).read_text()))


def cli(capsys, monkeypatch, *args) -> tuple[int, str, str]:
    return main_in_process(capsys, monkeypatch, *args)


def truncated_copy(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])  # the header survives, the pixel data is cut
    with Image.open(dst) as im:  # the header check passes: only decoding finds it
        assert im.size
    return dst


@pytest.fixture(scope="module")
def truncated_data(toy):
    """The toy probe's pre-training data with one record pointing at a truncated image."""
    probe = toy / "probe"
    records = json.loads((probe / "pretrain.json").read_text())
    truncated_copy(probe / records[0]["image"], probe / "truncated.png")
    bad = {**records[0], "id": "cut", "image": "truncated.png"}
    path = probe / "pretrain_truncated.json"
    path.write_text(json.dumps(records + [bad]))
    return path


# ---- training: data ------------------------------------------------------------------------------

@pytest.mark.parametrize("cache", [False, True], ids=["decode-in-loop", "cache-features"])
def test_truncated_image_is_skipped_and_counted(toy, truncated_data, tmp_path, cache):
    cfg = config(toy, tmp_path / "run", **{"pretrain.data": str(truncated_data), "cache_features": cache})
    summary = run_stage(cfg, "pretrain").summary
    assert summary["skipped"]["by_reason"] == {"unreadable_image": 1}
    assert "cut (field 'image'" in summary["skipped"]["examples"]["unreadable_image"][0]
    assert json.loads((tmp_path / "run/pretrain/summary.json").read_text())["skipped"]["total"] == 1


@pytest.mark.slow
def test_truncated_image_is_skipped_alike_by_two_processes(toy, truncated_data, tmp_path):
    out = tmp_path / "ddp"
    cfg = write_config(toy, out, **{"pretrain.data": str(truncated_data), "cache_features": True})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "-m", "connectorlab", "train", "--config", str(cfg), "--stage", "pretrain"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "pretrain/summary.json").read_text())
    assert summary["processes"] == 2 and summary["skipped"]["by_reason"] == {"unreadable_image": 1}
    assert summary["steps"] == 8  # 64 usable records / global batch 8: the skip did not desynchronise the ranks


def _records_report(tiny_dir, tmp_path, records):
    from transformers import AutoTokenizer

    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "data.json").write_text(json.dumps(records))
    proc = MultimodalProcessor(AutoTokenizer.from_pretrained(tiny_dir / "tokenizer"), "vicuna_v1", 4, max_length=200)
    report = SkipReport()
    load_samples(tmp_path / "data.json", tmp_path, proc, report)
    return report


GOOD = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A thing."}]


@pytest.mark.parametrize("record,reason", [
    ({"id": "m", "image": "missing.png", "conversations": GOOD}, "missing_image"),
    ({"id": "r", "conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}]},
     "malformed_conversation"),
    ({"id": "o", "image": "ok.png", "conversations": [{"from": "human", "value": "<image>\n" + "word " * 300},
                                                      {"from": "gpt", "value": "x"}]}, "over_length"),
], ids=["missing-image", "wrong-roles", "over-length"])
def test_bad_records_are_named_skips(tiny_dir, tmp_path, record, reason):
    report = _records_report(tiny_dir, tmp_path, [record])
    assert dict(report.counts) == {reason: 1} and report.examples[reason][0].startswith(record["id"])


def test_malformed_json_names_the_file_and_line(tmp_path, tiny_dir):
    (tmp_path / "d.jsonl").write_text('{"id": "a", "conversations": []}\n{"id": broken\n')
    with pytest.raises(DataError, match=r"d.jsonl: line 2: invalid JSON"):
        load_samples(tmp_path / "d.jsonl", tmp_path, None, SkipReport())


def test_later_stage_data_is_checked_before_the_first_stage_trains(toy, tmp_path):
    (tmp_path / "broken.json").write_text('[{"id": "a", ')
    cfg = config(toy, tmp_path / "run", **{"finetune.data": str(tmp_path / "broken.json")})
    with pytest.raises(DataError, match="broken.json: invalid JSON"):
        train(cfg, ["pretrain", "finetune"])
    assert not (tmp_path / "run/pretrain/summary.json").exists()
    assert not (tmp_path / "run/pretrain/checkpoints").exists()


def test_bad_model_config_is_found_before_training(toy, tmp_path):
    cfg = config(toy, tmp_path / "run", **{"model.connector": "avgpool", "model.connector_options": {"num_tokens": 5}})
    with pytest.raises(ValueError, match="num_tokens"):
        train(cfg, ["pretrain", "finetune"])
    assert not (tmp_path / "run/pretrain/checkpoints").exists()


# ---- training: configuration ---------------------------------------------------------------------

@pytest.mark.parametrize("key,value,message", [
    ("pretrain.global_batch", -16, r"pretrain.global_batch = -16: must be an integer >= 1"),
    ("pretrain.micro_batch", -16, r"pretrain.micro_batch = -16: must be an integer >= 1"),
    ("pretrain.epochs", 0, r"pretrain.epochs = 0: must be an integer >= 1"),
    ("pretrain.micro_batch", 0, r"pretrain.micro_batch = 0"),
    ("pretrain.global_batch", 0, r"pretrain.global_batch = 0"),
    ("checkpoint_every", 0, r"checkpoint_every = 0: must be an integer >= 1"),
    ("pretrain.global_batch", 16.5, r"pretrain.global_batch: 16.5 is not an integer"),
    ("finetune.lr", -1, r"finetune.lr = -1.0: must be a number > 0"),
    ("finetune.warmup_ratio", 1.5, r"finetune.warmup_ratio = 1.5: must be a number in \[0, 1\]"),
    ("pretrain.global_batch", 12, r"pretrain.global_batch = 12 must be a multiple of pretrain.micro_batch = 8"),
    ("model.max_length", 0, r"model.max_length = 0"),
    ("model.dtype", "float64", r"model.dtype = 'float64': must be one of float32, bfloat16, float16"),
    ("pretrain.lrr", 1, r"unknown key\(s\) lrr"),
], ids=lambda v: str(v))
def test_config_values_are_validated_at_load(tmp_path, key, value, message):
    data = {"model": {"vision": "v", "llm": "l"}, "pretrain": {"micro_batch": 8}}
    node = data
    *parts, last = key.split(".")
    for p in parts:
        node = node.setdefault(p, {})
    node[last] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message) as err:
        TrainConfig.from_file(path)
    assert str(path) in str(err.value)


def test_unknown_connector_lists_the_valid_names(toy, tmp_path):
    cfg = config(toy, tmp_path / "run", **{"model.connector": "mlpp"})
    with pytest.raises(ValueError, match="unknown connector 'mlpp'; valid names: .*mlp"):
        train(cfg, ["pretrain"])


# ---- training: output folder, resume, checkpoints ------------------------------------------------

def test_rerun_into_a_used_folder_is_refused_and_resume_checks_the_config(toy, tmp_path):
    out = tmp_path / "run"
    train(config(toy, out), ["pretrain"])
    with pytest.raises(RunMismatch, match="already holds a pretrain run of this configuration; run with --resume"):
        train(config(toy, out), ["pretrain"])
    with pytest.raises(RunMismatch, match=r"pretrain.lr: 0.001 -> 0.0005"):
        train(config(toy, out, **{"pretrain.lr": 5e-4}), ["pretrain"], resume=True)
    # Fine-tuning settings do not touch the finished pre-training: the next stage may use new ones.
    train(config(toy, out, **{"finetune.lr": 5e-4}), ["finetune"])
    with pytest.raises(RunMismatch, match=r"finetune.lr: 0.0005 -> 0.001"):
        train(config(toy, out), ["finetune"], resume=True)
    first = json.loads((out / "pretrain/summary.json").read_text())
    redone = train(config(toy, out, **{"pretrain.lr": 5e-4}), ["pretrain"], overwrite=True)["pretrain"].summary
    assert redone["final_loss"] != first["final_loss"]
    assert not (out / "finetune").exists()  # built on the discarded pre-training, so discarded with it
    assert json.loads((out / "pretrain/config.json").read_text())["pretrain"]["lr"] == 5e-4


def test_partial_last_log_line_is_trimmed_on_resume(toy, tmp_path):
    cfg = config(toy, tmp_path / "run")
    run_stage(cfg, "pretrain")
    stage = tmp_path / "run/pretrain"
    (stage / "summary.json").unlink()  # as if killed after the last checkpoint
    with (stage / "log.jsonl").open("a") as f:
        f.write('{"step": 9, "loss": 1.2')
    summary = run_stage(cfg, "pretrain", resume=True).summary
    rows = [json.loads(line) for line in (stage / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9)) and summary["resumed_from"]


def test_full_disk_during_a_checkpoint_is_named_and_cleaned_up(toy, tmp_path, monkeypatch):
    import shutil

    from connectorlab.training import checkpoint

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 448 vs 342")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 * 2**30, 10 * 2**30, 1024))
    cfg = config(toy, tmp_path / "run", **{"checkpoint_every": 1})
    with pytest.raises(DiskFullError, match=r"no space left on the disk of .*checkpoints while writing checkpoint "
                                            r"step-0000001 \(0 MiB free\)") as err:
        run_stage(cfg, "pretrain")
    assert "--resume" in str(err.value)
    assert list((tmp_path / "run/pretrain/checkpoints").iterdir()) == []  # no temporary folder left behind


@pytest.fixture()
def small_disk(tmp_path):
    """A real 64 KiB filesystem (tmpfs; needs root, as CI and this machine have), grown later with `remount`."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow
def test_a_really_full_disk_is_named_and_the_run_resumes_once_there_is_room(toy, small_disk):
    cfg = config(toy, small_disk / "run", **{"checkpoint_every": 1, "pretrain.image_workers": 0})
    with pytest.raises(DiskFullError, match="no space left on the disk of .*small_disk/run/pretrain/checkpoints"):
        run_stage(cfg, "pretrain")
    assert not [p for p in (small_disk / "run/pretrain/checkpoints").iterdir() if p.name.startswith(".")]
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    summary = run_stage(cfg, "pretrain", resume=True).summary
    assert summary["steps"] == 8


class Payload:
    """A pickle that runs code when loaded without weights_only: it creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_checkpoint_cannot_run_code_on_resume(toy, tmp_path):
    cfg = config(toy, tmp_path / "run")
    run_stage(cfg, "pretrain")
    stage = tmp_path / "run/pretrain"
    (stage / "summary.json").unlink()
    last = sorted((stage / "checkpoints").iterdir())[-1]
    marker = tmp_path / "code-ran"
    (last / "optimizer.pt").write_bytes(pickle.dumps({"state": Payload(marker)}))
    from connectorlab.training.checkpoint import MANIFEST, manifest

    (last / MANIFEST).write_text(json.dumps(manifest(last)))  # tampered consistently: only weights-only loading stops it
    with pytest.raises(ValueError, match="optimizer.pt: cannot read tensors: it holds objects other than tensors"):
        run_stage(cfg, "pretrain", resume=True)
    assert not marker.exists()


@pytest.mark.slow
def test_two_trainings_into_one_folder_do_not_run_together(toy, tmp_path):
    out = tmp_path / "run"
    with exclusive(out, "training run"), pytest.raises(BusyError, match="is in use by another training run"):
        train(config(toy, out), ["pretrain"])
    # Under DDP every process refuses (none waits at a barrier for a main process that has gone).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with exclusive(out, "training run"):
        res = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m",
                              "connectorlab", "train", "--config", str(write_config(toy, out)), "--stage", "pretrain"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode != 0 and res.stderr.count("is in use by another training run") == 2


# ---- evaluation ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def probe_bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe_bench")
    generate(root, ProbeParams(seed=2, image_size=32, n_train=2, n_test=3))
    return root


@pytest.fixture()
def saved_model(tiny_dir, tmp_path):
    def save(seed: int) -> Path:
        torch.manual_seed(seed)
        model = MultimodalLM.build(ModelConfig(vision=str(tiny_dir / "clip"), llm=str(tiny_dir / "llm"),
                                               connector="avgpool", connector_options={"num_tokens": 4}))
        model.save_pretrained(tmp_path / "model")
        return tmp_path / "model"
    return save


def test_a_model_retrained_in_place_is_not_scored_with_old_predictions(saved_model, probe_bench, tmp_path,
                                                                       capsys, monkeypatch):
    path = saved_model(0)
    rows = len(load_mmbench(probe_bench / "test.tsv").items)
    args = ("eval", "--model", path, "--benchmark", "mmbench", "--data", probe_bench / "test.tsv", "--out",
            tmp_path / "ev", "--max-new-tokens", "2")
    code, out, _ = cli(capsys, monkeypatch, *args)
    assert code == 0, out
    code, out, _ = cli(capsys, monkeypatch, *args)
    assert code == 0 and f"reused {rows} predictions" in out  # a reuse is said on screen
    saved_model(1)  # retrained: same path, other weights
    code, _, err = cli(capsys, monkeypatch, *args)
    assert code == 2 and "model_fingerprint: sha256:" in err and "--overwrite" in err
    code, out, _ = cli(capsys, monkeypatch, *args, "--overwrite")
    assert code == 0 and "reused" not in out
    assert json.loads((tmp_path / "ev/results.json").read_text())["answered_now"] == rows


@pytest.mark.parametrize("value", ["0", "-1"])
def test_eval_batch_size_must_be_positive(saved_model, probe_bench, tmp_path, capsys, monkeypatch, value):
    code, out, err = cli(capsys, monkeypatch, "eval", "--model", saved_model(0), "--benchmark", "mmbench", "--data",
                         probe_bench / "test.tsv", "--out", tmp_path / "ev", "--batch-size", value)
    assert code == 2 and "--batch-size" in err and not (tmp_path / "ev").exists()
    with pytest.raises(ValueError, match="batch_size = 0: must be an integer >= 1"):
        evaluate(MultimodalLM.from_pretrained(saved_model(0)), load_mmbench(probe_bench / "test.tsv"), tmp_path / "x",
                 batch_size=0)


def test_eval_of_a_partial_mme_release_is_incomplete(saved_model, tmp_path, capsys, monkeypatch):
    release = tmp_path / "MME" / "count"
    release.mkdir(parents=True)
    Image.new("RGB", (32, 32), (200, 10, 10)).save(release / "1.jpg")
    (release / "1.txt").write_text("Is there a dog? Please answer yes or no.\tYes\n"
                                   "Is there a cat? Please answer yes or no.\tNo\n")
    args = ("eval", "--model", saved_model(0), "--benchmark", "mme", "--data", tmp_path / "MME", "--out", tmp_path / "ev",
            "--max-new-tokens", "2")
    code, out, err = cli(capsys, monkeypatch, *args)
    assert code == 3 and "INCOMPLETE: missing sub-task(s) existence, position" in out and "count (2 of 60 questions)" in out
    assert "--allow-incomplete" in err
    code, _, _ = cli(capsys, monkeypatch, *args, "--allow-incomplete")
    assert code == 0


def test_two_evaluations_into_one_folder_do_not_run_together(saved_model, probe_bench, tmp_path):
    model = MultimodalLM.from_pretrained(saved_model(0))
    bench = load_mmbench(probe_bench / "test.tsv")
    with exclusive(tmp_path / "ev", "evaluation"), pytest.raises(BusyError, match="in use by another evaluation"):
        evaluate(model, bench, tmp_path / "ev", show_progress=False)


def test_probe_test_set_is_scored_with_the_probe_task_types(probe_bench, tmp_path, capsys, monkeypatch):
    df = pd.read_csv(probe_bench / "test.tsv", sep="\t", keep_default_na=False, dtype=str)
    df["prediction"] = df["answer"]
    df.drop(columns=["image"]).to_csv(tmp_path / "upload.tsv", sep="\t", index=False)
    code, out, _ = cli(capsys, monkeypatch, "score", "mmbench", "--predictions", tmp_path / "upload.tsv", "--json")
    data = json.loads(out)
    assert code == 0 and data["task_section"] == "probe" and "every category is one of its sub-tasks" in \
        data["task_section_note"]
    assert data["task_types"]["fine"]["n"] > 0 and data["circular"] == 1.0
    assert load_mmbench(probe_bench / "test.tsv").score({})["task_section"] == "probe"


# ---- scoring: MMBench ----------------------------------------------------------------------------

@pytest.fixture()
def upload(probe_bench, tmp_path):
    df = pd.read_csv(probe_bench / "test.tsv", sep="\t", keep_default_na=False, dtype=str)
    df["prediction"] = df["answer"]
    return df.drop(columns=["image"])


@pytest.mark.parametrize("column", ["A", "C"])
def test_mmbench_upload_without_an_option_column_is_an_error(upload, tmp_path, column):
    upload.drop(columns=[column]).to_csv(tmp_path / "u.tsv", sep="\t", index=False)
    with pytest.raises(DataError, match=f"u.tsv: missing option column\\(s\\) {column} "):
        predictions_table(tmp_path / "u.tsv")


def test_mmbench_questions_without_a_prediction_row_count_as_missing(upload, probe_bench, tmp_path, capsys, monkeypatch):
    upload.iloc[2:].to_csv(tmp_path / "u.tsv", sep="\t", index=False)
    table = predictions_table(tmp_path / "u.tsv", probe_bench / "test.tsv")
    assert len(table.rows) == len(upload) and sum(r["prediction"] is None for r in table.rows) == 2
    code, out, _ = cli(capsys, monkeypatch, "score", "mmbench", "--predictions", tmp_path / "u.tsv",
                       "--questions", probe_bench / "test.tsv")
    assert code == 3 and "INCOMPLETE: 2 question(s) without a prediction" in out


def test_mmbench_file_that_is_not_a_workbook_or_is_a_folder(tmp_path, capsys, monkeypatch):
    (tmp_path / "upload.xlsx").write_text("index\tprediction\n1\tA\n")
    code, _, err = cli(capsys, monkeypatch, "score", "mmbench", "--predictions", tmp_path / "upload.xlsx")
    assert code == 2 and "upload.xlsx: not an Excel workbook" in err and "Traceback" not in err
    code, _, err = cli(capsys, monkeypatch, "score", "mmbench", "--predictions", tmp_path)
    assert code == 2 and "is a directory" in err
    with pytest.raises(IsADirectoryError, match="is a folder, expected an MMBench TSV"):
        load_mmbench(tmp_path)


# ---- scoring: MME --------------------------------------------------------------------------------

def tool_folder(shared_data: Path, dst: Path) -> Path:
    dst.mkdir()
    for path in (shared_data / "mme/sample_answers_lavin").glob("*.txt"):
        (dst / path.name).write_bytes(path.read_bytes())
    return dst


def test_mme_folder_missing_a_subtask_is_incomplete(shared_data, tmp_path, capsys, monkeypatch):
    folder = tool_folder(shared_data, tmp_path / "answers")
    (folder / "OCR.txt").unlink()
    (folder / "OCR_copy.txt").write_text("x\ty\tYes\tYes\n")
    (folder / "notes.txt").write_text("my notes\n")
    code, out, _ = cli(capsys, monkeypatch, "score", "mme", "--predictions", folder)
    assert code == 3
    assert "INCOMPLETE: missing sub-task(s) OCR, not counted in the totals" in out
    assert "ignored 2 file(s) that are not one of MME's 14 sub-task files: OCR_copy.txt, notes.txt" in out
    assert "perception 856.11" in out  # 963.61 less OCR's 107.50: the other sub-tasks as the official tool
    code, out, _ = cli(capsys, monkeypatch, "score", "mme", "--predictions", folder, "--json", "--allow-incomplete")
    data = json.loads(out)
    assert code == 0 and data["complete"] is False and data["missing_subtasks"] == ["OCR"]


def test_mme_folder_with_fewer_questions_than_the_release_is_incomplete(shared_data, capsys, monkeypatch):
    code, out, _ = cli(capsys, monkeypatch, "score", "mme", "--predictions", shared_data / "external/mme_llava7b_partial")
    assert code == 3 and "landmark (398 of 400 questions)" in out and "scene (378 of 400 questions)" in out


def test_llava_mme_answers_missing_are_left_out_as_the_official_pipeline_does(shared_data, capsys, monkeypatch):
    answers = shared_data / "external/mme_llava7b_jsonl/llava-v1.5-7b.jsonl"
    official = join_llava_answers(answers, shared_data / "mme/ground_truth")
    assert len(official.missing) == 6 and sum(map(len, official.lines.values())) == 2374 - 6
    code, out, _ = cli(capsys, monkeypatch, "score", "mme", "--predictions", answers, "--ground-truth",
                       shared_data / "mme/ground_truth", "--json")
    data = json.loads(out)
    assert code == 3 and data["complete"] is False and data["missing_predictions"] == 6
    assert data["missing_rule"].startswith("official")
    code, out, _ = cli(capsys, monkeypatch, "score", "mme", "--predictions", answers, "--ground-truth",
                       shared_data / "mme/ground_truth", "--json", "--missing-as-wrong", "--allow-incomplete")
    wrong = json.loads(out)
    assert code == 0 and wrong["perception"] + wrong["cognition"] < data["perception"] + data["cognition"]


def test_llava_mme_duplicates_blank_lines_and_half_images(shared_data, tmp_path):
    src = (shared_data / "external/llava_answers/mme_mlp2_448.jsonl").read_text().splitlines()
    (tmp_path / "a.jsonl").write_text("\n".join(src[:3] + [src[0], ""] + src[3:]) + "\n\n")
    joined = join_llava_answers(tmp_path / "a.jsonl", shared_data / "mme/ground_truth")
    assert len(joined.duplicates) == 1 and joined.blank_lines == 2 and not joined.missing
    assert joined.report()["duplicate_examples"][0].startswith("line 4:")
    (tmp_path / "half.jsonl").write_text("\n".join(src[1:]) + "\n")  # the first image keeps one of its answers
    with pytest.raises(DataError, match="one of the image's two answers is missing.*--missing-as-wrong"):
        join_llava_answers(tmp_path / "half.jsonl", shared_data / "mme/ground_truth")
    assert len(join_llava_answers(tmp_path / "half.jsonl", shared_data / "mme/ground_truth", True).missing) == 1


@pytest.mark.parametrize("encoding,message", [("utf-16", "it is UTF-16"), ("latin-1", "byte 0xe9 at offset")])
def test_mme_file_in_another_encoding_is_named(shared_data, tmp_path, encoding, message):
    folder = tool_folder(shared_data, tmp_path / "answers")
    text = (folder / "artwork.txt").read_text().replace("painting", "peinture é", 1)
    (folder / "artwork.txt").write_bytes(text.encode(encoding))
    with pytest.raises(ValueError, match=f"artwork.txt: not UTF-8 text: {message}"):
        read_tool_folder(folder)


def test_empty_mme_subtask_file_is_named(shared_data, tmp_path):
    folder = tool_folder(shared_data, tmp_path / "answers")
    (folder / "count.txt").write_text("")
    with pytest.raises(DataError, match="count.txt: the sub-task file is empty"):
        read_tool_folder(folder)


# ---- files, security, messages -------------------------------------------------------------------

@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_written_files_respect_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "r.json", {"a": 1})
        with atomic_dir(tmp_path / "model", "test output") as tmp:
            (tmp / "w").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "model").stat().st_mode & 0o777 == dir_mode


def test_trust_remote_code_is_never_set():
    sources = [p for p in (ROOT / "connectorlab").rglob("*.py")]
    assert sources and not [p for p in sources if "trust_remote_code=True" in p.read_text()]


@pytest.mark.parametrize("text,message", [
    ("model: [unclosed\n", "not valid YAML"),
    ("- model\n- pretrain\n", "the top level must be a mapping of keys"),
    ("model: {vision: v, llm: l}\npretrain: {global_batch: -1}\n", "pretrain.global_batch = -1"),
], ids=["bad-yaml", "top-level-list", "bad-value"])
def test_config_errors_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    code, _, err = cli(capsys, monkeypatch, "train", "--config", path)
    assert code == 2 and str(path) in err and message in err and "Traceback" not in err
    assert "--debug" in err
    monkeypatch.setattr(sys, "argv", ["connectorlab", "--debug", "train", "--config", str(path)])
    from connectorlab.cli import main

    with pytest.raises(ValueError, match=message):  # --debug lets the traceback through
        main()


def test_eval_on_a_folder_that_is_not_a_model_says_what_is_missing(probe_bench, tmp_path, capsys, monkeypatch):
    (tmp_path / "nomodel").mkdir()
    code, _, err = cli(capsys, monkeypatch, "eval", "--model", tmp_path / "nomodel", "--benchmark", "mmbench",
                       "--data", probe_bench / "test.tsv", "--out", tmp_path / "ev")
    assert code == 2 and "is not a saved connectorlab model: missing connectorlab_config.json" in err


def test_version_and_every_option_has_help(capsys, monkeypatch):
    import connectorlab
    from connectorlab.cli import app

    code, out, _ = cli(capsys, monkeypatch, "--version")
    assert code == 0 and out.strip() == f"connectorlab {connectorlab.__version__}"
    missing, seen = [], []

    def walk(cmd, path):
        for param in cmd.params:
            if param.param_type_name == "option":  # typer's options are not click.Option subclasses
                seen.append(param)
                if not param.help:
                    missing.append(f"{path} {param.opts[0]}")
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(app), "connectorlab")
    assert len(seen) > 40 and not missing, missing
