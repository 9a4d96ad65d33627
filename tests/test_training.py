"""Training: data validation, batching, config, DDP equivalence and exact kill-and-resume."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import run_cli, write_config  # noqa: E402  (tests/ is on sys.path under pytest)
from PIL import Image
from safetensors.torch import load_file

from connectorlab.data.batching import StepPlan, accumulation_steps, epoch_order, split_global_batch
from connectorlab.data.images import ImageLoader
from connectorlab.data.llava import load_samples
from connectorlab.data.skips import DataError, SkipReport
from connectorlab.language.processor import MultimodalProcessor
from connectorlab.training.config import TrainConfig
from connectorlab.training.trainer import run_stage

ROOT = Path(__file__).resolve().parents[1]


def losses(path: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


# ---- data ----------------------------------------------------------------------------------------

def test_bad_records_are_counted_per_reason(tiny_dir, tmp_path):
    from transformers import AutoTokenizer

    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    good = {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A thing."}
    records = [
        {"id": "a", "image": "ok.png", "conversations": list(good)},
        {"id": "b", "image": "missing.png", "conversations": list(good)},
        {"id": "c", "image": "broken.png", "conversations": list(good)},
        {"id": "d", "conversations": [{"from": "robot", "value": "x"}]},
        {"id": "e", "conversations": [{"from": "human", "value": "only a question"}]},
        {"id": "f", "image": "ok.png", "conversations": [{"from": "human", "value": "<image>\n" + "word " * 300},
                                                         {"from": "gpt", "value": "x"}]},
        {"id": "g", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"id": "h", "conversations": "not a list"},
    ]
    (tmp_path / "data.json").write_text(json.dumps(records))
    proc = MultimodalProcessor(AutoTokenizer.from_pretrained(tiny_dir / "tokenizer"), "vicuna_v1", 4, max_length=200)
    report = SkipReport()
    samples = load_samples(tmp_path / "data.json", tmp_path, proc, report)
    assert [s.id for s in samples] == ["a", "g"]
    assert dict(report.counts) == {"missing_image": 1, "unreadable_image": 1, "malformed_conversation": 2,
                                   "no_supervised_token": 1, "over_length": 1}
    assert report.examples["missing_image"][0].startswith("b (field 'image'")
    with pytest.raises(DataError, match=r"data.json: record b: missing_image"):
        load_samples(tmp_path / "data.json", tmp_path, proc, SkipReport(strict=True))


def test_epoch_order_groups_modalities_and_is_seeded():
    lengths = [10 + (i * 7) % 50 for i in range(40)]
    has_image = [i % 4 != 0 for i in range(40)]
    a = epoch_order(lengths, has_image, 8, seed=0, epoch=0)
    assert a == epoch_order(lengths, has_image, 8, seed=0, epoch=0)
    assert a != epoch_order(lengths, has_image, 8, seed=0, epoch=1)
    assert all(len(b) == 8 for b in a) and len({i for b in a for i in b}) == 40
    for b in a:
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
    pure = [b for b in a if len({has_image[i] for i in b}) == 1]
    assert len(pure) >= 3  # 30 image + 10 text samples: three image-only batches, one text-only
    ungrouped = epoch_order(lengths, has_image, 8, seed=0, epoch=0, group_by_length=False)
    assert len(ungrouped) == 5


def test_a_length_span_groups_like_lengths_across_global_batches():
    """With one micro-batch per step, sorting within a global batch removes no padding; a span of batches does."""
    rng = random.Random(0)
    lengths, has_image = [rng.randint(50, 90) for _ in range(400)], [True] * 400

    def padded(order):
        return sum(max(lengths[i] for i in b) * len(b) for b in order)

    llava = epoch_order(lengths, has_image, 8, seed=0, epoch=0)
    spanned = epoch_order(lengths, has_image, 8, seed=0, epoch=0, length_span=50)
    assert spanned == epoch_order(lengths, has_image, 8, seed=0, epoch=0, length_span=50)
    assert sorted(i for b in spanned for i in b) == list(range(400))
    assert padded(spanned) < 0.9 * padded(llava) and padded(spanned) - sum(lengths) < 0.02 * sum(lengths)

    def cut_from_one_sorted_run(order):
        ranges = sorted(((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in order), reverse=True)
        return all(low >= high for (low, _), (_, high) in zip(ranges, ranges[1:], strict=False))

    assert cut_from_one_sorted_run(spanned) and not cut_from_one_sorted_run(llava)  # 400 samples: a span of 50 is all
    plan = StepPlan(lengths, has_image, 8, seed=0, group_by_length=True, world=1, rank=0, micro_batch=8, length_span=50)
    assert plan(3)[1] == spanned[3]


def test_global_batch_split_covers_each_sample_once():
    batch = list(range(16))
    parts = [split_global_batch(batch, 2, r, 4) for r in range(2)]
    assert sorted(i for p in parts for mb in p for i in mb) == batch
    assert accumulation_steps(16, 2, 4) == 2
    with pytest.raises(ValueError, match="multiple of processes x micro_batch"):
        accumulation_steps(16, 3, 4)


def test_step_plan_is_a_function_of_the_step_even_across_epochs():
    lengths, has_image = [10 + i % 7 for i in range(24)], [True] * 24
    plan = StepPlan(lengths, has_image, 8, seed=0, group_by_length=True, world=2, rank=1, micro_batch=2)
    assert plan.steps_per_epoch == 3
    looked_ahead = [plan(s + 1) for s in range(7)] + [plan(s) for s in range(8)]  # ahead first, then back
    for step in range(8):
        epoch, k = divmod(step, 3)
        gbatch = epoch_order(lengths, has_image, 8, 0, epoch)[k]
        assert plan(step) == (epoch, gbatch, split_global_batch(gbatch, 2, 1, 2))
    assert looked_ahead[7:] == [plan(s) for s in range(8)]


def test_image_loader_threads_return_what_inline_decoding_returns(tmp_path):
    paths = []
    for i in range(9):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (20 + i, 16), (i * 20, 255 - i * 20, 7 * i)).save(paths[-1])
    transform = lambda im: torch.from_numpy(np.asarray(im.resize((8, 8)), dtype=np.float32))  # noqa: E731
    with ImageLoader(transform, 0) as inline, ImageLoader(transform, 3) as threads:
        expected = inline.load(paths)
        pending = [threads.submit(paths[:4]), threads.submit(paths[4:])]
        assert torch.equal(torch.cat([p() for p in pending]), expected)
        assert torch.equal(threads.load([lambda p=p: Image.open(p).convert("RGB") for p in paths]), expected)
        assert threads.load([]) is None
        streamed = list(threads.stream(iter([paths[:4], [], paths[4:]])))
        assert torch.equal(streamed[0], expected[:4]) and streamed[1] is None and torch.equal(streamed[2], expected[4:])
        assert list(threads.stream([])) == []
    with pytest.raises(ValueError, match="image workers must be >= 0"):
        ImageLoader(transform, -1)


def test_decoding_images_ahead_changes_no_loss(toy, tmp_path):
    # Text-only records make micro-batches without images, which the decoding stream must keep in step with.
    records = json.loads((toy / "probe/finetune.json").read_text())
    text_only = [{"id": f"text-{r['id']}", "conversations": [{**t, "value": t["value"].replace("<image>\n", "")}
                                                            for t in r["conversations"]]} for r in records[:16]]
    data = toy / "probe/mixed.json"
    data.write_text(json.dumps(records + text_only))
    logs = {}
    for workers in (0, 3):
        out = tmp_path / f"w{workers}"
        cfg = TrainConfig.from_dict(yaml.safe_load(write_config(toy, out, **{
            "finetune.image_workers": workers, "finetune.max_steps": None, "finetune.epochs": 2,
            "finetune.data": str(data), "finetune.init_connector": "random"}).read_text()))
        run_stage(cfg, "finetune")
        logs[workers] = losses(out / "finetune/log.jsonl")
    assert len(logs[0]) == 20 and logs[0] == logs[3]


def test_config_overrides_and_unknown_keys(toy, tmp_path):
    path = write_config(toy, tmp_path / "run")
    cfg = TrainConfig.from_file(path, ["pretrain.lr=5e-4", "model.connector=avgpool", "finetune.lora={r: 4, alpha: 8}"])
    assert cfg.pretrain.lr == 5e-4 and cfg.model.connector == "avgpool" and cfg.finetune.lora.r == 4
    assert cfg.finetune.warmup_ratio == 0.03 and cfg.pretrain.template == "plain"  # LLaVA-1.5 defaults kept
    with pytest.raises(ValueError, match="unknown key\\(s\\) lrr"):
        TrainConfig.from_file(path, ["pretrain.lrr=1"])


# ---- runs ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_both_stages_train_and_loss_falls(toy, tmp_path):
    out = tmp_path / "run"
    cfg = write_config(toy, out, **{"pretrain.epochs": 3, "finetune.max_steps": None, "finetune.epochs": 3,
                                    "cache_features": True})
    res = run_cli(["train", "--config", str(cfg)])
    assert res.returncode == 0, res.stderr[-3000:]
    for stage in ("pretrain", "finetune"):
        summary = json.loads((out / stage / "summary.json").read_text())
        assert summary["steps"] == 24 and summary["wall_clock_s"] > 0 and summary["skipped"]["total"] == 0
        ls = losses(out / stage / "log.jsonl")
        assert sum(ls[-4:]) / 4 < sum(ls[:4]) / 4, (stage, ls)
    assert (out / "pretrain/connector.safetensors").exists()
    from connectorlab.model.mllm import MultimodalLM

    model = MultimodalLM.from_pretrained(out / "finetune/model")
    assert model.connector.num_output_tokens == 16


@pytest.mark.slow
def test_lora_finetune_merges_on_save(toy, tmp_path):
    out = tmp_path / "lora"
    cfg = write_config(toy, out, **{"finetune.lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "bf16": True})
    res = run_cli(["train", "--config", str(cfg), "--stage", "finetune"])
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "finetune/summary.json").read_text())
    assert summary["trainable_parameters"] < 40_000  # connector + adapters, not the whole LM
    assert summary["bf16"] is True
    files = [p.name for p in (out / "finetune/model/llm").iterdir()]
    assert "model.safetensors" in files and "adapter_config.json" not in files


@pytest.mark.slow
def test_ddp_two_processes_match_one(toy, tmp_path):
    single, double = tmp_path / "single", tmp_path / "ddp"
    res = run_cli(["train", "--config", str(write_config(toy, single)), "--stage", "pretrain"])
    assert res.returncode == 0, res.stderr[-3000:]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "-m", "connectorlab", "train", "--config", str(write_config(toy, double)), "--stage", "pretrain"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((double / "pretrain/summary.json").read_text())["processes"] == 2
    # Tolerance: only float summation order differs (all-reduce of two partial gradients).
    torch.testing.assert_close(torch.tensor(losses(double / "pretrain/log.jsonl")),
                               torch.tensor(losses(single / "pretrain/log.jsonl")), rtol=1e-5, atol=1e-6)
    a = load_file(str(single / "pretrain/connector.safetensors"))
    b = load_file(str(double / "pretrain/connector.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(toy, tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    extra = {"pretrain.epochs": 10, "pretrain.micro_batch": 1}
    res = run_cli(["train", "--config", str(write_config(toy, ref, **extra)), "--stage", "pretrain"])
    assert res.returncode == 0, res.stderr[-3000:]
    cfg = write_config(toy, killed, **extra)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "connectorlab", "train", "--config", str(cfg), "--stage", "pretrain"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = killed / "pretrain/checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpts / "step-0000006").exists():
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "pretrain/summary.json").exists()
    res = run_cli(["train", "--config", str(cfg), "--stage", "pretrain", "--resume"])
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((killed / "pretrain/summary.json").read_text())
    assert summary["resumed_from"] is not None and summary["steps"] == 80
    assert losses(killed / "pretrain/log.jsonl") == losses(ref / "pretrain/log.jsonl")
    a = load_file(str(ref / "pretrain/connector.safetensors"))
    b = load_file(str(killed / "pretrain/connector.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The whole file, metadata included, is byte-identical (two metadata keys came out in random order).
    assert (ref / "pretrain/connector.safetensors").read_bytes() == (killed / "pretrain/connector.safetensors").read_bytes()
    assert len(list(ckpts.iterdir())) == 2  # keep_checkpoints


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_load(path):
    cfg = TrainConfig.from_file(path)
    assert cfg.pretrain.data and cfg.finetune.data
    if "llava15" in path.name:
        assert cfg.model.image_size == 336 and cfg.pretrain.lr == 1e-3 and cfg.finetune.lr == 2e-5
        assert cfg.pretrain.global_batch == 256 and cfg.finetune.global_batch == 128
