"""Checkpoints that are verified before they are resumed from (issue 32): a flipped block or a cut-short file in the
newest checkpoint falls back to the one before it, under FSDP over 2 gloo processes and in one process, and ends on
the uninterrupted run's weights; with none left, one line names the file. A non-finite loss stops every process."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import finish, launch, run_cli, write_config
from safetensors.torch import load_file, save_file

from connectorlab.errors import CheckpointError, TrainingDiverged
from connectorlab.training.checkpoint import MANIFEST, manifest


def flip_block(path: Path) -> None:
    data = bytearray(path.read_bytes())
    start = max(0, len(data) // 2 - 2048)
    data[start:start + 4096] = bytes(b ^ 0xFF for b in data[start:start + 4096])
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE = {"flipped": flip_block, "truncated": truncate}


def unfinish(run: Path) -> list[Path]:
    """The run as a kill right after its last checkpoint leaves it: checkpoints written, no summary, no artifact."""
    (run / "pretrain" / "summary.json").unlink()
    (run / "pretrain" / "connector.safetensors").unlink()
    return sorted((run / "pretrain" / "checkpoints").glob("step-*"))


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "pretrain" / "log.jsonl").read_text().splitlines()]


EXTRA = {"pretrain.epochs": 2, "pretrain.micro_batch": 4, "checkpoint_every": 4, "keep_checkpoints": 2}


@pytest.fixture(scope="module")
def reference(toy, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    single = root / "single"
    res = run_cli(["train", "--config", str(write_config(toy, single, **EXTRA)), "--stage", "pretrain"])
    assert res.returncode == 0, res.stderr[-3000:]
    fsdp = root / "fsdp"
    finish(launch(write_config(toy, fsdp, **EXTRA, sharding="fsdp"), "--stage", "pretrain"))
    return {"single": single, "fsdp": fsdp}


def test_every_checkpoint_has_a_manifest_of_its_files(reference):
    for run in reference.values():
        for ckpt in sorted((run / "pretrain" / "checkpoints").glob("step-*")):
            listed = json.loads((ckpt / MANIFEST).read_text())["files"]
            assert listed == manifest(ckpt)["files"] and "state.json" in listed


@pytest.mark.slow
@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("kind", ["single", "fsdp"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(reference, toy, tmp_path, kind, damage):
    run = tmp_path / kind
    shutil.copytree(reference[kind], run)
    ckpts = unfinish(run)
    newest = ckpts[-1]
    target = next(newest.glob("sharded/*.distcp")) if kind == "fsdp" else newest / "trainable.safetensors"
    DAMAGE[damage](target)
    cfg = write_config(toy, run, **EXTRA, **({"sharding": "fsdp"} if kind == "fsdp" else {}))
    if kind == "fsdp":
        proc = launch(cfg, "--stage", "pretrain", "--resume")
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        err = out + err
    else:
        res = run_cli(["train", "--config", str(cfg), "--stage", "pretrain", "--resume"])
        assert res.returncode == 0, res.stderr[-3000:]
        err = res.stdout + res.stderr
    flat = "".join(err.split())  # rich wraps long lines
    assert f"checkpoint{newest}cannotberesumedfrom" in flat and "setaside" in flat, err[-3000:]
    summary = json.loads((run / "pretrain" / "summary.json").read_text())
    assert summary["resumed_from"] == str(ckpts[-2])  # the previous complete checkpoint
    assert (newest.parent / (newest.name + ".corrupt")).is_dir()
    a = load_file(str(reference[kind] / "pretrain" / "connector.safetensors"))
    b = load_file(str(run / "pretrain" / "connector.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # as if never interrupted
    assert losses(run) == losses(reference[kind])


@pytest.mark.slow
def test_with_every_checkpoint_damaged_one_line_names_the_file(reference, toy, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference["single"], run)
    for ckpt in unfinish(run):
        truncate(ckpt / "optimizer.pt")
    res = run_cli(["train", "--config", str(write_config(toy, run, **EXTRA)), "--stage", "pretrain", "--resume"])
    flat = "".join(res.stderr.split())
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "canberesumedfrom" in flat and "optimizer.pthas" in flat, res.stderr[-2000:]


def nan_weights(ckpt: Path) -> None:
    weights = load_file(str(ckpt / "trainable.safetensors"))
    save_file({k: torch.full_like(v, float("nan")) for k, v in weights.items()}, str(ckpt / "trainable.safetensors"))
    (ckpt / MANIFEST).write_text(json.dumps(manifest(ckpt)))  # a valid checkpoint of a diverged model


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_a_non_finite_loss_stops_training_on_every_process(toy, tmp_path, processes):
    run = tmp_path / "run"
    cfg = write_config(toy, run, **EXTRA, **{"pretrain.max_steps": 4})
    finish(launch(cfg, "--stage", "pretrain", processes=processes))
    ckpt = unfinish(run)[-1]
    nan_weights(ckpt)
    more = write_config(toy, run, **EXTRA, **{"pretrain.max_steps": 8})
    (run / "pretrain" / "config.json").write_text(json.dumps(json.loads((run / "pretrain" / "config.json").read_text())
                                                              | {"pretrain": yaml_stage(more)}))
    proc = launch(more, "--stage", "pretrain", "--resume", processes=processes)
    out, err = proc.communicate(timeout=600)
    err = out + err
    assert proc.returncode != 0
    text = "".join(err.split())
    assert text.count("thelossisnanatstep5") >= processes, err[-3000:]
    assert f"lastgoodcheckpoint:{ckpt}" in text
    assert not (run / "pretrain" / "checkpoints" / "step-0000008").exists()


def yaml_stage(path: Path) -> dict:
    import yaml

    from connectorlab.training.config import TrainConfig

    return TrainConfig.from_dict(yaml.safe_load(path.read_text())).to_dict()["pretrain"]


def test_allow_nonfinite_trains_on(toy, tmp_path, monkeypatch):
    import yaml

    from connectorlab.model.mllm import MultimodalLM
    from connectorlab.training.config import TrainConfig
    from connectorlab.training.trainer import train

    real = MultimodalLM.forward

    def nan_loss(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(MultimodalLM, "forward", nan_loss)
    cfg = TrainConfig.from_dict(yaml.safe_load(write_config(toy, tmp_path / "a", **{"pretrain.max_steps": 2}).read_text()))
    with pytest.raises(TrainingDiverged, match="the loss is nan at step 1; last good checkpoint: none"):
        train(cfg, ["pretrain"])
    cfg = TrainConfig.from_dict(yaml.safe_load(write_config(toy, tmp_path / "b", **{"pretrain.max_steps": 2},
                                                            allow_nonfinite=True).read_text()))
    assert train(cfg, ["pretrain"])["pretrain"].summary["steps"] == 2


def test_checkpoint_error_is_a_user_error():
    from connectorlab.errors import ConnectorlabError

    assert issubclass(CheckpointError, ConnectorlabError) and issubclass(TrainingDiverged, ConnectorlabError)
