"""FSDP (torch FSDP2 over 2 gloo CPU processes): trains like one process, writes each process's shards of the trainable
weights only, resumes after SIGKILL to the uninterrupted run's weights, reshards onto another process count, and
gathers a whole model that loads and answers like the unsharded one. DDP's kill and resume with 2 processes too."""
import json
from pathlib import Path

import pytest
import torch
from helpers import finish, launch, run_cli, run_until_checkpoint, write_config
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # every test here starts a multi-process launch


def losses(path: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_close(a: dict, b: dict, exact: bool = False) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:  # only float summation order differs (reduce-scatter of two partial gradients)
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def runs(toy, tmp_path_factory):
    """One process (replicated) and FSDP over two processes, both stages, same configuration."""
    root = tmp_path_factory.mktemp("fsdp")
    single, sharded = root / "single", root / "fsdp"
    res = run_cli(["train", "--config", str(write_config(toy, single, **{"finetune.max_steps": 3}))])
    assert res.returncode == 0, res.stderr[-3000:]
    finish(launch(write_config(toy, sharded, **{"finetune.max_steps": 3, "sharding": "fsdp"})))
    return single, sharded


def test_fsdp_trains_like_one_process(runs):
    single, sharded = runs
    for stage in ("pretrain", "finetune"):
        summary = json.loads((sharded / stage / "summary.json").read_text())
        assert summary["processes"] == 2 and summary["sharding"] == "fsdp"
        assert len(summary["peak_memory_mb_per_process"]) == 2 and summary["tokens_per_s"] > 0
        torch.testing.assert_close(torch.tensor(losses(sharded / stage / "log.jsonl")),
                                   torch.tensor(losses(single / stage / "log.jsonl")), rtol=1e-5, atol=1e-6)
    assert_close(weights(single / "pretrain/connector.safetensors"), weights(sharded / "pretrain/connector.safetensors"))


def test_fsdp_checkpoints_hold_each_process_shard_of_the_trainable_weights_only(runs):
    from torch.distributed.checkpoint import FileSystemReader

    _, sharded = runs
    for stage, trained in (("pretrain", ("connector.",)), ("finetune", ("connector.", "llm."))):
        ckpt = sorted((sharded / stage / "checkpoints").iterdir())[-1] / "sharded"
        assert len(list(ckpt.glob("*.distcp"))) == 2  # one file per process
        keys = [k for k in FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata if k.startswith("model.")]
        assert keys and all(k.removeprefix("model.").startswith(trained) for k in keys), keys[:5]
        assert not any(k.startswith("model.vision.") for k in keys)  # the frozen tower is never written
        if stage == "pretrain":
            assert not any(k.startswith("model.llm.") for k in keys)  # nor the frozen LM of stage 1


def test_the_gathered_model_loads_and_answers_like_the_unsharded_one(runs, toy):
    from connectorlab.evaluation.benchmarks.mmbench import load_mmbench
    from connectorlab.model.mllm import MultimodalLM

    single, sharded = runs
    a, b = (MultimodalLM.from_pretrained(p / "finetune/model").eval() for p in (single, sharded))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)
    bench = load_mmbench(toy / "probe/test.tsv", mapping_section="probe")
    items = bench.items[:8]
    prompts = [a.processor.encode_prompt(it.prompt, num_images=1) for it in items]
    pixels = torch.stack([a.image_transform(it.load_image()) for it in items])
    with torch.inference_mode():
        answers = [m.processor.decode(o) for m in (a, b) for o in m.generate(prompts, pixel_values=pixels,
                                                                               max_new_tokens=4)]
    assert answers[:8] == answers[8:]


@pytest.mark.parametrize("sharding,resume_processes", [("fsdp", 2), ("fsdp", 1), ("none", 2)],
                         ids=["fsdp", "fsdp-resharded-onto-1", "ddp"])
def test_sigkill_of_two_processes_then_resume(toy, tmp_path, sharding, resume_processes):
    extra = {"pretrain.epochs": 8, "pretrain.micro_batch": 1, "sharding": sharding, "checkpoint_every": 4}
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    finish(launch(write_config(toy, ref, **extra), "--stage", "pretrain"))
    cfg = write_config(toy, killed, **extra)
    run_until_checkpoint(cfg, killed, 8)
    finish(launch(cfg, "--stage", "pretrain", "--resume", processes=resume_processes))
    summary = json.loads((killed / "pretrain/summary.json").read_text())
    assert summary["resumed_from"] is not None and summary["steps"] == 64
    if sharding == "none":  # DDP: the main process's copy, of the trainable weights only
        last = sorted((killed / "pretrain/checkpoints").iterdir())[-1]
        assert all(k.startswith("connector.") for k in load_file(str(last / "trainable.safetensors")))
    a, b = weights(ref / "pretrain/connector.safetensors"), weights(killed / "pretrain/connector.safetensors")
    if resume_processes == 2:
        assert summary["resharded_from"] is None
        assert_close(a, b, exact=True)  # gloo's reductions are deterministic on CPU: bitwise equal
    else:
        assert summary["resharded_from"] == 2
        assert_close(a, b)  # one process sums the two halves' gradients in another order


@pytest.mark.parametrize("finished", [True, False], ids=["finished", "failed"])
def test_a_worker_meets_the_others_before_closing_its_group_only_after_a_finished_command(monkeypatch, finished):
    import torch.distributed as dist

    from connectorlab.cli import close_process_group

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    met = []
    barrier = dist.barrier
    monkeypatch.setattr(dist, "barrier", lambda *a, **kw: (met.append(True), barrier(*a, **kw))[1])
    try:
        close_process_group(finished)
        assert not dist.is_initialized() and met == ([True] if finished else [])
    finally:  # a group left behind by a failure here would change what later tests of this process see
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("outcome,finished", [(None, True), (SystemExit(0), True), (SystemExit(1), False),
                                              (RuntimeError("crash"), False)], ids=["returned", "exit-0", "exit-1", "crash"])
def test_only_a_command_that_finished_counts_as_finished_at_exit(monkeypatch, outcome, finished):
    import connectorlab.cli as cli

    def app(**_):
        if outcome is not None:
            raise outcome

    seen = []
    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setattr(cli, "close_process_group", seen.append)
    if outcome is None:
        cli.main()
    else:
        with pytest.raises(type(outcome)):
            cli.main()
    assert seen == [finished]


def test_a_finished_deepspeed_worker_leaves_right_after_the_barrier(monkeypatch):
    """DeepSpeed's threads abort an orderly shutdown now and then: a launched DeepSpeed worker whose command finished
    meets the others, then exits at once without tearing the group down; anything else closes the group as before."""
    import sys

    import torch.distributed as dist

    import connectorlab.cli as cli

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    calls = []
    barrier = dist.barrier
    monkeypatch.setattr(dist, "barrier", lambda *a, **kw: (calls.append("barrier"), barrier(*a, **kw))[1])
    monkeypatch.setattr(cli.os, "_exit", lambda code: calls.append(("exit", code)) or (_ for _ in ()).throw(SystemExit))
    monkeypatch.setitem(sys.modules, "deepspeed", sys.modules.get("deepspeed") or object())
    monkeypatch.setenv("LOCAL_RANK", "0")
    try:
        with pytest.raises(SystemExit):
            cli.close_process_group(True)
        assert calls == ["barrier", ("exit", 0)] and dist.is_initialized()  # left without destroying the group
        calls.clear()
        cli.close_process_group(False)  # a failed command: no barrier, the group closed, no early exit
        assert calls == [] and not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
