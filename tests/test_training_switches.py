"""The memory and speed switches a 7B user needs, each on its CPU path; throughput and MFU in the log and summary;
tracking; stage-1 text-only records; stage defaults built in Python."""
import json

import pytest
import torch
from helpers import write_config
from safetensors.torch import load_file

from connectorlab.model.config import ModelConfig
from connectorlab.training.config import StageConfig, TrainConfig
from connectorlab.training.trainer import run_stage, train


def config(toy, out, **extra) -> TrainConfig:
    return TrainConfig.from_file(write_config(toy, out, **extra))


def losses(folder) -> list[float]:
    return [json.loads(line)["loss"] for line in (folder / "log.jsonl").read_text().splitlines()]


def test_stage_defaults_are_the_same_from_python_and_yaml():
    model = ModelConfig(vision="v", llm="l")
    built = TrainConfig(model=model, finetune=StageConfig(data="d.json"))
    read = TrainConfig.from_dict({"model": {"vision": "v", "llm": "l"}, "finetune": {"data": "d.json"}})
    assert built.finetune == read.finetune and built.pretrain == read.pretrain
    assert (built.finetune.lr, built.finetune.global_batch) == (2e-5, 128)  # not pre-training's 1e-3 and 256
    assert (built.pretrain.lr, built.pretrain.global_batch, built.pretrain.template) == (1e-3, 256, "plain")


def test_text_only_records_are_skipped_in_stage_1(toy, tmp_path):
    """Eight text-only records fill a global batch of their own (records are grouped by modality): without the skip,
    that step has no gradient anywhere and crashes."""
    records = json.loads((toy / "probe/pretrain.json").read_text())
    text = [{"id": f"text-{i}", "conversations": [{"from": "human", "value": "describe"},
                                                  {"from": "gpt", "value": "a red circle"}]} for i in range(8)]
    data = tmp_path / "mixed.json"
    data.write_text(json.dumps(records + text))
    cfg = config(toy, tmp_path / "run", **{"pretrain.data": str(data), "pretrain.image_folder": str(toy / "probe")})
    result = run_stage(cfg, "pretrain")
    skipped = result.summary["skipped"]
    assert skipped["by_reason"] == {"text_only_in_pretrain": 8} and result.summary["records"]["usable"] == len(records)


def test_gradient_checkpointing_changes_no_loss(toy, tmp_path):
    plain = run_stage(config(toy, tmp_path / "plain"), "pretrain")
    ckpt = run_stage(config(toy, tmp_path / "ckpt", gradient_checkpointing=True), "pretrain")
    assert ckpt.summary["gradient_checkpointing"] is True
    from connectorlab.training.trainer import build_stage_model

    cfg = config(toy, tmp_path / "x", gradient_checkpointing=True)
    assert build_stage_model(cfg, "pretrain", cfg.pretrain).llm.is_gradient_checkpointing
    torch.testing.assert_close(torch.tensor(losses(ckpt.folder)), torch.tensor(losses(plain.folder)), rtol=1e-6, atol=1e-7)


def test_eager_attention_trains_like_sdpa(toy, tmp_path):
    sdpa = run_stage(config(toy, tmp_path / "sdpa"), "pretrain")
    eager = run_stage(config(toy, tmp_path / "eager", **{"model.attn_implementation": "eager"}), "pretrain")
    torch.testing.assert_close(torch.tensor(losses(eager.folder)), torch.tensor(losses(sdpa.folder)), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_connector_trains_like_eager_and_keeps_its_weight_names(toy, tmp_path):
    eager = run_stage(config(toy, tmp_path / "eager"), "pretrain")
    compiled = run_stage(config(toy, tmp_path / "compiled", compile_connector=True), "pretrain")
    torch.testing.assert_close(torch.tensor(losses(compiled.folder)), torch.tensor(losses(eager.folder)),
                               rtol=1e-4, atol=1e-5)
    assert load_file(str(compiled.artifact)).keys() == load_file(str(eager.artifact)).keys()


def test_fp16_with_a_scaler_and_fused_adamw_train(toy, tmp_path):
    result = run_stage(config(toy, tmp_path / "fp16", fp16=True, fused_adamw=True, **{"finetune.max_steps": 3}), "pretrain")
    assert result.summary["fp16"] is True and all(torch.isfinite(torch.tensor(losses(result.folder))))


def test_bf16_and_fp16_together_are_refused(toy, tmp_path):
    with pytest.raises(ValueError, match="bf16 and fp16"):
        config(toy, tmp_path / "x", bf16=True, fp16=True)


def test_throughput_and_mfu_in_the_step_log_and_the_summary(toy, tmp_path):
    result = run_stage(config(toy, tmp_path / "mfu", peak_tflops=0.5), "pretrain")
    rows = [json.loads(line) for line in (result.folder / "log.jsonl").read_text().splitlines()]
    for row in rows:
        assert row["tokens_per_s"] > 0 and row["model_tflops_per_s"] > 0 and 0 < row["mfu"] < 1
        assert row["mfu"] == pytest.approx(row["model_tflops_per_s"] / 0.5)
    s = result.summary
    assert s["mfu"] > 0 and s["peak_flops_per_process"] == 0.5e12 and len(s["peak_memory_mb_per_process"]) == 1
    without = run_stage(config(toy, tmp_path / "nopeak"), "pretrain")
    assert without.summary["mfu"] is None and without.summary["tokens_per_s"] > 0  # a CPU has no known peak


def test_flop_model_counts_what_trains():
    from connectorlab.training.throughput import FlopModel

    stage1 = FlopModel(llm_per_token=10, head_per_token=4, vision_per_image=100, connector_per_image=50,
                       llm_factor=2, connector_factor=3, vision_factor=1)
    assert stage1.step(tokens=20, supervised=5, images=2) == 2 * (10 * 20 + 4 * 5) + 2 * (3 * 50 + 100)


def test_tensorboard_tracker_gets_the_step_scalars(toy, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_stage(config(toy, tmp_path / "tb", report_to="tensorboard"), "pretrain")
    events = EventAccumulator(str(result.folder / "tracking" / "pretrain"))
    events.Reload()
    assert {"loss", "lr", "tokens_per_s"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss")] == list(range(1, result.summary["steps"] + 1))


def test_a_tracker_without_its_package_is_refused_before_training(toy, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ValueError, match="report_to = 'wandb' needs the wandb package"):
        train(config(toy, tmp_path / "wandb", report_to="wandb"), ["pretrain"])
    assert not (tmp_path / "wandb/pretrain/log.jsonl").exists()


@pytest.mark.parametrize(("env", "sharding", "refusal"), [
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "none",
     "asks for ZeRO stage 3 while the training config has sharding: none"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, "zero3",
     "asks for ZeRO stage 2 while the training config has sharding: zero3"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
      "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"}, "zero3", "does not run ZeRO-Offload"),
    ({}, "zero2", "runs under a launcher"),
    ({"ACCELERATE_USE_FSDP": "true"}, "none", "this launch asks for Accelerate's FSDP plugin"),
], ids=["zero3-launch-none-config", "stages-disagree", "offload", "zero-without-launcher", "fsdp-plugin"])
def test_a_sharding_engine_the_launch_asks_for_is_never_dropped_silently_on_a_cpu(monkeypatch, env, sharding, refusal):
    """`accelerate launch --config_file configs/accelerate/zero3.yaml` on a CPU used to train as plain DDP; a launch
    config either agrees with the training config's engine and runs it (tests/test_zero_training.py) or is refused."""
    import torch

    from connectorlab.errors import ConfigError
    from connectorlab.training.trainer import make_accelerator

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=refusal):
        make_accelerator(sharding)


def test_fp16_is_refused_with_zero():
    from connectorlab.errors import ConfigError

    with pytest.raises(ConfigError, match="fp16 with sharding: zero2 is not supported"):
        TrainConfig.from_dict({"model": {"vision": "v", "llm": "l"}, "fp16": True, "sharding": "zero2"})
