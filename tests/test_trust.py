"""Trust at the edges (issue 32): outputs are never overwritten unasked, sources never destroyed, the template
survives export -> import, and bad files give one line naming them while a bug keeps its traceback."""
from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch
from helpers import main_in_process

from connectorlab.errors import ConnectorlabError, InputError, OutputExistsError
from connectorlab.evaluation.result import EvalResult
from connectorlab.model.config import ModelConfig
from connectorlab.model.mllm import MultimodalLM
from connectorlab.utils.io import OUTPUT_MARKER, check_output
from connectorlab.utils.weights import read_tensors


def cli(capsys, monkeypatch, *args) -> tuple[int, str, str]:
    return main_in_process(capsys, monkeypatch, *args)


@pytest.fixture(scope="module")
def models(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    out = {}
    for template in ("vicuna_v1", "plain_v1"):
        torch.manual_seed(0)
        model = MultimodalLM.build(ModelConfig(vision=str(tiny_dir / "clip"), llm=str(tiny_dir / "llm"),
                                               connector="mlp", template=template))
        folder = root / "run" / template / "model"  # a model inside a training run, as the trainer leaves it
        model.save_pretrained(folder)
        out[template] = folder
    return out


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt", ["llava-hf", "hf-remote-code"])
def test_export_refuses_a_folder_it_did_not_write_and_never_touches_its_source(models, tmp_path, capsys, monkeypatch,
                                                                               fmt):
    model = models["vicuna_v1"]
    before = files(model.parent.parent)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    for out, words in ((notes, "todo.txt"), (model, "is the source"), (model / "llm", "is inside the source"),
                       (model.parent, "holds the source"), (model.parent.parent, "holds the source")):
        code, _, err = cli(capsys, monkeypatch, "export", model, "--format", fmt, "--out", out)
        assert code == 2 and words in err and "Traceback" not in err, err
    code, _, err = cli(capsys, monkeypatch, "export", model, "--format", fmt, "--out", model, "--overwrite")
    assert code == 2 and "is the source" in err  # --overwrite never destroys the source
    assert (notes / "todo.txt").read_text() == "keep me" and files(model.parent.parent) == before
    export = tmp_path / "export"
    for _ in range(2):  # an earlier export of the same kind is replaced without asking
        code, _, err = cli(capsys, monkeypatch, "export", model, "--format", fmt, "--out", export)
        assert code == 0, err
    code, _, err = cli(capsys, monkeypatch, "export", model, "--format", fmt, "--out", notes, "--overwrite")
    assert code == 0 and not (notes / "todo.txt").exists()


def test_export_to_the_current_folder_leaves_no_temporary_folder(models, tmp_path, capsys, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    code, _, err = cli(capsys, monkeypatch, "export", models["vicuna_v1"], "--out", ".")
    assert code == 0, err
    assert (tmp_path / "here" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]  # no .here.*.tmp or .here.old beside it


def test_import_refuses_its_source_and_a_foreign_folder(models, tmp_path, capsys, monkeypatch):
    export = tmp_path / "hf"
    assert cli(capsys, monkeypatch, "export", models["vicuna_v1"], "--out", export)[0] == 0
    for out, words in ((export, "is the source"), (export / "sub", "is inside the source")):
        code, _, err = cli(capsys, monkeypatch, "import", "llava-hf", export, "--out", out)
        assert code == 2 and words in err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.csv").write_text("1,2")
    code, _, err = cli(capsys, monkeypatch, "import", "llava-hf", export, "--out", tmp_path / "mine")
    assert code == 2 and "data.csv" in err and (tmp_path / "mine" / "data.csv").exists()
    for _ in range(2):  # an earlier import (a connectorlab model) is replaced
        assert cli(capsys, monkeypatch, "import", "llava-hf", export, "--out", tmp_path / "imported")[0] == 0
    assert (tmp_path / "imported" / OUTPUT_MARKER).is_file()


def test_check_output_names_what_is_there(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("x.txt", "y.txt", "sub"):
        (tmp_path / "a" / name).mkdir() if name == "sub" else (tmp_path / "a" / name).write_text("")
    with pytest.raises(OutputExistsError, match=r"3 entries \(sub/, x.txt, y.txt\)"):
        check_output(tmp_path / "a", "llava-hf export")
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputExistsError, match="is a file"):
        check_output(tmp_path / "file", "llava-hf export")
    assert check_output(tmp_path / "new", "llava-hf export") == (tmp_path / "new").resolve()


@pytest.mark.parametrize(("template", "given", "want"), [("plain_v1", None, "plain_v1"), ("vicuna_v1", None, "vicuna_v1"),
                                                         ("plain_v1", "vicuna_v1", "vicuna_v1")])
def test_export_then_import_keeps_the_template(models, tmp_path, capsys, monkeypatch, template, given, want):
    export = tmp_path / "hf"
    assert cli(capsys, monkeypatch, "export", models[template], "--out", export)[0] == 0
    extra = ["--template", given] if given else []
    code, out, err = cli(capsys, monkeypatch, "import", "llava-hf", export, "--out", tmp_path / "back", *extra)
    assert code == 0, err
    back = MultimodalLM.from_pretrained(tmp_path / "back")
    assert back.config.template == want and f"template {want}" in out
    original = MultimodalLM.from_pretrained(models[want if given else template])
    prompt = "<image>\nWhat is it?"
    assert back.processor.encode_prompt(prompt) == original.processor.encode_prompt(prompt)


def test_import_reads_the_template_from_the_chat_template_without_metadata(models, tmp_path, capsys, monkeypatch):
    export = tmp_path / "hf"
    assert cli(capsys, monkeypatch, "export", models["plain_v1"], "--out", export)[0] == 0
    (export / "connectorlab_export.json").unlink()  # a copy that kept only the Hugging Face files
    code, out, err = cli(capsys, monkeypatch, "import", "llava-hf", export, "--out", tmp_path / "back")
    assert code == 0 and "template plain_v1" in out, err


class Boom:
    def __reduce__(self):
        return (print, ("this ran",))


def bad_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    pickled = folder / "evil.bin"
    pickled.write_bytes(pickle.dumps({"w": Boom()}))
    not_tensors = folder / "list.bin"
    torch.save([1, 2, 3], not_tensors)
    return {"pickle": pickled, "not_tensors": not_tensors}


def test_weight_files_that_are_not_tensors_are_named(tmp_path, capsys):
    bad = bad_files(tmp_path)
    with pytest.raises(InputError, match="evil.bin: cannot read tensors: it holds objects other than tensors"):
        read_tensors(bad["pickle"])
    assert "this ran" not in capsys.readouterr().out
    with pytest.raises(InputError, match="list.bin: expected a mapping of names to tensors, got list"):
        read_tensors(bad["not_tensors"])


def copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("part", ["connector.safetensors", "llm/model.safetensors", "vision/model.safetensors"])
def test_a_truncated_weights_file_is_one_line(models, tmp_path, capsys, monkeypatch, part, shared_data):
    model = copy_model(models["vicuna_v1"], tmp_path / "m")
    data = (model / part).read_bytes()
    (model / part).write_bytes(data[: len(data) // 2])
    code, _, err = cli(capsys, monkeypatch, "eval", "--model", model, "--benchmark", "mmbench", "--data",
                       shared_data / "mmbench" / "mmbench_dev_20230712_sample.tsv", "--out", tmp_path / "ev")
    assert code == 2 and "Traceback" not in err and Path(part).name in err, err


def test_a_llava_hf_folder_whose_sizes_do_not_match_is_one_line(models, tmp_path, capsys, monkeypatch):
    import json

    export = tmp_path / "hf"
    assert cli(capsys, monkeypatch, "export", models["vicuna_v1"], "--out", export)[0] == 0
    config = json.loads((export / "config.json").read_text())
    config["text_config"]["hidden_size"] *= 2
    (export / "config.json").write_text(json.dumps(config))
    code, _, err = cli(capsys, monkeypatch, "import", "llava-hf", export, "--out", tmp_path / "back")
    assert code == 2 and "Traceback" not in err and "cannot read the llava-hf weights" in err, err


def test_a_stray_value_error_keeps_its_traceback(monkeypatch, capsys):
    """A bug is not the user's mistake: only connectorlab's own errors are shortened."""
    import connectorlab.connectors.describe as describe

    def bug(*args, **kwargs):
        raise ValueError("a bug in connectorlab")

    monkeypatch.setattr(describe, "describe_zoo", bug)
    monkeypatch.setattr(sys, "argv", ["connectorlab", "connectors"])
    from connectorlab.cli import main

    with pytest.raises(ValueError, match="a bug in connectorlab"):
        main()


def test_user_errors_share_one_base():
    from connectorlab.errors import BusyError, ConfigError, DiskFullError, MissingPathError

    for cls in (InputError, ConfigError, MissingPathError, OutputExistsError, BusyError, DiskFullError):
        assert issubclass(cls, ConnectorlabError)


def test_a_parquet_file_with_a_schema_and_no_rows_is_one_line(models, tmp_path, capsys, monkeypatch):
    import pandas as pd

    empty = pd.DataFrame({c: pd.Series([], dtype=str) for c in ("index", "question", "answer", "A", "B", "category")})
    empty.to_parquet(tmp_path / "empty.parquet")
    code, _, err = cli(capsys, monkeypatch, "eval", "--model", models["vicuna_v1"], "--benchmark", "mmbench",
                       "--data", tmp_path / "empty.parquet", "--out", tmp_path / "ev")
    assert code == 2 and "empty.parquet: a parquet file with no rows" in err and "Traceback" not in err, err


def corrupt_first_image(tsv: Path, dst: Path) -> str:
    import base64

    import pandas as pd

    df = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
    data = base64.b64decode(df.loc[0, "image"])
    df.loc[0, "image"] = base64.b64encode(data[: len(data) // 2]).decode()  # header intact, pixels cut short
    df.to_csv(dst, sep="\t", index=False)
    return str(df.loc[0, "index"])


def test_a_corrupt_image_is_skipped_counted_named_and_exits_3(models, toy, tmp_path, capsys, monkeypatch):
    tsv = tmp_path / "test.tsv"
    first = corrupt_first_image(toy / "probe" / "test.tsv", tsv)
    args = ["eval", "--model", models["vicuna_v1"], "--benchmark", "mmbench", "--data", tsv, "--task-section", "probe",
            "--max-new-tokens", "2", "--batch-size", "3"]
    code, out, err = cli(capsys, monkeypatch, *args, "--out", tmp_path / "ev")
    assert code == 3, err
    assert f"not answered: 1 question(s), unreadable_image (first: {first} (cannot decode image" in out
    assert "with an image that does not decode, not answered" in out

    result = EvalResult.read(tmp_path / "ev")
    assert result.skipped_prompts["by_reason"] == {"unreadable_image": 1}
    assert result.scores["missing_predictions"] == 1 and not result.scores["complete"]
    assert result.answered_now == result.items - 1
    code, _, _ = cli(capsys, monkeypatch, *args, "--out", tmp_path / "ev2", "--allow-incomplete")
    assert code == 0


def interrupt_on_call(monkeypatch, target, name: str, after: int = 0):
    """Ctrl-C (a real SIGINT to this process) on call number `after` + 1 of `target.name`."""
    import os
    import signal
    import time

    real, calls = getattr(target, name), []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) > after:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs before this returns
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapped)


@pytest.fixture(autouse=True)
def restore_sigint():
    import signal

    before = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_in_eval_says_what_was_saved_and_how_to_resume(models, toy, tmp_path, capsys, monkeypatch):
    interrupt_on_call(monkeypatch, MultimodalLM, "generate", after=1)
    args = ["eval", "--model", models["vicuna_v1"], "--benchmark", "mmbench", "--data", toy / "probe" / "test.tsv",
            "--out", tmp_path / "ev", "--max-new-tokens", "1", "--batch-size", "4", "--overwrite"]
    code, _, err = cli(capsys, monkeypatch, *args)
    flat = " ".join(err.split())
    assert code == 130 and "Traceback" not in err
    assert f"interrupted: evaluation of {models['vicuna_v1']} on mmbench; saved: 4 predictions in {tmp_path / 'ev'}" in flat
    assert "resume with: connectorlab eval --model" in flat and "--overwrite" not in flat  # it would discard them


def test_ctrl_c_in_train_names_the_checkpoint_and_the_resume_command(toy, tmp_path, capsys, monkeypatch):
    from helpers import write_config

    import connectorlab.training.loop as loop

    interrupt_on_call(monkeypatch, loop, "save_checkpoint", after=1)
    cfg = write_config(toy, tmp_path / "run", **{"pretrain.max_steps": 6})
    code, _, err = cli(capsys, monkeypatch, "train", "--config", cfg, "--stage", "pretrain")
    flat = " ".join(err.split())
    assert code == 130, err
    assert f"saved: pretrain checkpoint {tmp_path / 'run' / 'pretrain' / 'checkpoints' / 'step-0000002'}" in flat
    assert f"resume with: connectorlab train --config {cfg} --stage pretrain --resume" in flat
    monkeypatch.undo()
    code, _, err = cli(capsys, monkeypatch, "train", "--config", cfg, "--stage", "pretrain", "--resume")
    assert code == 0, err


def test_ctrl_c_in_a_study_counts_the_finished_cells(toy, tmp_path, capsys, monkeypatch):
    import yaml
    from helpers import plan_data

    import connectorlab.study.executors as executors

    interrupt_on_call(monkeypatch, executors, "run_cell")
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(plan_data(toy, tmp_path / "study", toy / "probe" / "test.tsv")))
    code, _, err = cli(capsys, monkeypatch, "study", "run", plan)
    flat = " ".join(err.split())
    assert code == 130 and f"saved: 0 of 1 cells finished in {tmp_path / 'study'}" in flat
    assert f"resume with: connectorlab study run {plan}" in flat
