"""DeepSpeed ZeRO-2 and ZeRO-3 through Accelerate on 2 gloo CPU processes (DS_ACCELERATOR=cpu): they train like one
process (losses, schedule, weights), their checkpoints hold no frozen weights and load weights-only, a SIGKILL and
resume gives the uninterrupted run's losses and weights, resuming onto another process count is refused with the
reason, the gathered model loads and answers like the unsharded one, and an Accelerate DeepSpeed launch config runs
as DeepSpeed (never as plain DDP)."""
import json
from pathlib import Path

import pytest
import torch
from helpers import ROOT, finish, launch, run_cli, run_until_checkpoint, torchrun, write_config
from safetensors.torch import load_file

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow

ENGINES = ("zero2", "zero3")
# Pre-training of 64 one-sample micro-batch steps, so that a kill lands between checkpoints; 3 fine-tuning steps.
EXTRA = {"pretrain.epochs": 8, "pretrain.micro_batch": 1, "checkpoint_every": 4, "finetune.max_steps": 3}


def log(path: Path, key: str = "loss") -> list[float]:
    return [json.loads(line)[key] for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(toy, tmp_path_factory):
    """One process (replicated), ZeRO-2 and ZeRO-3 over two processes: both stages, the same configuration."""
    root = tmp_path_factory.mktemp("zero")
    res = run_cli(["train", "--config", str(write_config(toy, root / "single", **EXTRA))])
    assert res.returncode == 0, res.stderr[-3000:]
    for engine in ENGINES:
        out = root / engine
        finish(launch(write_config(toy, out, **EXTRA, sharding=engine)), written=out / "finetune/summary.json")
    return root


@pytest.mark.parametrize("engine", ENGINES)
def test_zero_trains_like_one_process(runs, engine):
    for stage in ("pretrain", "finetune"):
        summary = json.loads((runs / engine / stage / "summary.json").read_text())
        assert summary["processes"] == 2 and summary["sharding"] == engine
        assert len(summary["peak_memory_mb_per_process"]) == 2 and summary["tokens_per_s"] > 0
        single = json.loads((runs / "single" / stage / "summary.json").read_text())
        assert summary["trainable_parameters"] == single["trainable_parameters"]  # counted whole under ZeRO-3 too
        assert summary["model_flops_per_sample"] == pytest.approx(single["model_flops_per_sample"])
        # connectorlab's schedule on DeepSpeed's optimizer: the same learning rates, and so the same losses
        assert log(runs / engine / stage / "log.jsonl", "lr") == log(runs / "single" / stage / "log.jsonl", "lr")
        torch.testing.assert_close(torch.tensor(log(runs / engine / stage / "log.jsonl")),
                                   torch.tensor(log(runs / "single" / stage / "log.jsonl")), rtol=1e-5, atol=1e-6)
    a, b = (load_file(str(runs / name / "pretrain/connector.safetensors")) for name in ("single", engine))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def tensors_in(obj, prefix=""):
    """(path, tensor) for every tensor anywhere inside a loaded checkpoint file."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from tensors_in(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors_in(v, f"{prefix}/{i}")


@pytest.mark.parametrize("engine", ENGINES)
def test_zero_checkpoints_hold_the_trained_state_only_and_load_weights_only(runs, engine):
    from connectorlab.training import zero

    for stage, trained in (("pretrain", ("connector.",)), ("finetune", ("connector.", "llm."))):
        ckpt = sorted((runs / engine / stage / "checkpoints").glob("step-*"))[-1]
        files = sorted((ckpt / zero.ZERO_DIR / zero.TAG).glob("*.pt"))
        assert len([f for f in files if "optim_states" in f.name]) == 2  # one partition per process
        trainable = json.loads((runs / engine / stage / "summary.json").read_text())["trainable_parameters"]
        partitions = 0
        for file in files:
            with torch.serialization.safe_globals(zero.safe_classes()):  # what `zero.load` checks before DeepSpeed
                state = torch.load(file, weights_only=True)
            module = state.get("module", {})
            assert all(k.startswith(trained) for k in module), [k for k in module if not k.startswith(trained)][:5]
            assert not any(k.startswith("vision.") for k in module)
            if engine == "zero3":  # the parameters live in the optimizer's partitions: 0-size placeholders here
                assert all(v.numel() == 0 for v in module.values())
            opt = state.get("optimizer_state_dict", {})
            flat = opt.get("fp32_flat_groups") or opt.get("single_partition_of_fp32_groups") or []
            partitions += sum(t.numel() for t in flat)
        # both halves of the full-precision trained weights, padded to an alignment: no frozen tensor among them
        assert trainable <= partitions < trainable + 2 * 2 * 64, (partitions, trainable)


@pytest.mark.parametrize("engine", ENGINES)
def test_the_gathered_zero_model_loads_and_answers_like_the_unsharded_one(runs, toy, engine):
    from connectorlab.evaluation.benchmarks.mmbench import load_mmbench
    from connectorlab.model.mllm import MultimodalLM

    a, b = (MultimodalLM.from_pretrained(runs / name / "finetune/model").eval() for name in ("single", engine))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)
    items = load_mmbench(toy / "probe/test.tsv", mapping_section="probe").items[:8]
    prompts = [a.processor.encode_prompt(it.prompt, num_images=1) for it in items]
    pixels = torch.stack([a.image_transform(it.load_image()) for it in items])
    with torch.inference_mode():
        answers = [[m.processor.decode(o) for o in m.generate(prompts, pixel_values=pixels, max_new_tokens=4)]
                   for m in (a, b)]
    assert answers[0] == answers[1]


@pytest.mark.parametrize("engine", ENGINES)
def test_sigkill_of_a_zero_run_then_resume_is_exact_and_another_process_count_is_refused(runs, toy, tmp_path, engine):
    killed = tmp_path / "killed"
    cfg = write_config(toy, killed, **EXTRA, sharding=engine)
    run_until_checkpoint(cfg, killed, 8)
    newest = sorted((killed / "pretrain/checkpoints").glob("step-*"))[-1].name
    alone = torchrun(cfg, "--stage", "pretrain", "--resume", processes=1)
    assert alone.returncode != 0, alone.stderr[-3000:]  # the worker exits 2; torchrun reports 1
    assert "written by 2 processes; resuming with 1 is refused: its optimizer state is partitioned" in alone.stderr
    assert sorted((killed / "pretrain/checkpoints").glob("step-*"))[-1].name == newest  # nothing set aside or lost
    finish(launch(cfg, "--stage", "pretrain", "--resume"), written=killed / "pretrain/summary.json")
    summary = json.loads((killed / "pretrain/summary.json").read_text())
    assert summary["resumed_from"] is not None and summary["steps"] == 64
    ref = runs / engine / "pretrain"
    assert log(killed / "pretrain/log.jsonl") == log(ref / "log.jsonl")[-len(log(killed / "pretrain/log.jsonl")):]
    a, b = (load_file(str(p / "connector.safetensors")) for p in (ref, killed / "pretrain"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # gloo's reductions are deterministic on CPU: bitwise equal


def test_an_accelerate_zero3_launch_config_runs_deepspeed_and_must_agree_with_the_training_config(toy, tmp_path):
    """`configs/accelerate/zero3.yaml` on a CPU used to train as plain DDP; now it runs ZeRO-3 or is refused."""
    config_file = ROOT / "configs/accelerate/zero3.yaml"
    disagree = write_config(toy, tmp_path / "none", **{"pretrain.max_steps": 2})
    proc = launch(disagree, "--stage", "pretrain", config_file=config_file)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode != 0 and "asks for ZeRO stage 3 while the training config has sharding: none" in err
    assert not (tmp_path / "none/pretrain/summary.json").exists()
    out = tmp_path / "zero3"
    finish(launch(write_config(toy, out, **{"pretrain.max_steps": 2}, sharding="zero3"), "--stage", "pretrain",
                  config_file=config_file), written=out / "pretrain/summary.json")
    summary = json.loads((out / "pretrain/summary.json").read_text())
    assert summary["sharding"] == "zero3" and summary["processes"] == 2
    assert list((out / "pretrain/checkpoints").glob("step-*/deepspeed/state/*optim_states.pt"))
