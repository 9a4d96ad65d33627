"""What several test files share that is not a fixture (fixtures live in conftest.py): paths, config writers, ways
to run the CLI in this process or another, launchers, small data builders. Test files import it; none imports another
test file."""
from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from PIL import Image

from connectorlab.model.config import ModelConfig
from connectorlab.model.mllm import MultimodalLM
from connectorlab.probe.presets import TinySizes

ROOT = Path(__file__).resolve().parents[1]
SIZES = TinySizes(vision_hidden=32, vision_layers=2, vision_heads=2, llm_hidden=64, llm_layers=2, llm_heads=2)


def write_config(toy: Path, out: Path, **extra) -> Path:
    cfg = {
        "model": {"vision": str(toy / "models/vision"), "llm": str(toy / "models/llm"), "connector": "mlp",
                  "select_layer": -1, "template": "plain_v1", "max_length": 512},
        "output_dir": str(out), "seed": 3, "checkpoint_every": 2, "keep_checkpoints": 2,
        "pretrain": {"data": str(toy / "probe/pretrain.json"), "global_batch": 8, "micro_batch": 2, "lr": 1e-3,
                     "epochs": 1},
        "finetune": {"data": str(toy / "probe/finetune.json"), "global_batch": 8, "micro_batch": 4, "lr": 1e-3,
                     "max_steps": 4},
    }
    for key, value in extra.items():
        node = cfg
        *parts, last = key.split(".")
        for p in parts:
            node = node[p]
        node[last] = value
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "connectorlab", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, **kw)


def main_in_process(capsys, monkeypatch, *args) -> tuple[int, str, str]:
    """`connectorlab ARGS` in this process, through the same entry point as the console script: (exit code, out, err)."""
    from connectorlab.cli import main

    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setattr(sys, "argv", ["connectorlab", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


LAUNCH_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    """A port of its own for each launch: a killed launch's rendezvous port may linger a moment."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: Path, *args: str, processes: int = 2, config_file: Path | None = None) -> subprocess.Popen:
    """`accelerate launch ... connectorlab train`: plain multi-process, or from an Accelerate launch config file."""
    if config_file is not None:
        how = ["--config_file", str(config_file), "--num_processes", str(processes), "--main_process_port", str(free_port())]
    else:
        multi = ["--multi_gpu", "--main_process_port", str(free_port())] if processes > 1 else []
        how = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--num_processes",
               str(processes), *multi]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *how, "-m", "connectorlab", "train", "--config",
           str(config), *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=LAUNCH_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def torchrun(config: Path, *args: str, processes: int = 1) -> subprocess.CompletedProcess:
    """A launched run of any process count, one included (a launcher sets LOCAL_RANK, as `accelerate launch` does
    for two or more)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
           str(free_port()), "-m", "connectorlab", "train", "--config", str(config), *args]
    return subprocess.run(cmd, cwd=ROOT, env=LAUNCH_ENV, capture_output=True, text=True, timeout=600)


EXIT_ABORT = "terminate called without an active exception"  # gloo/DeepSpeed threads at interpreter exit


def finish(proc: subprocess.Popen, written: Path | None = None) -> None:
    """The launch succeeded. With `written` (a file the run writes last), a launch that finished its work and then
    aborted at interpreter exit counts as finished: the test judges the files, as the issue of that abort asks."""
    _, err = proc.communicate(timeout=600)
    if proc.returncode != 0 and written is not None and EXIT_ABORT in err and written.exists():
        return
    assert proc.returncode == 0, err[-3000:]


def run_until_checkpoint(config: Path, folder: Path, step: int, processes: int = 2) -> None:
    proc = launch(config, "--stage", "pretrain", processes=processes)
    ckpts = folder / "pretrain/checkpoints"
    reached = lambda: any(int(p.name[5:]) >= step for p in ckpts.glob("step-*"))  # noqa: E731  (older ones are pruned)
    deadline = time.time() + 300
    while time.time() < deadline and not (ckpts.exists() and reached()) and proc.poll() is None:
        time.sleep(0.01)
    # Every process of the launch at once, as a node failure would: torchrun starts its workers in sessions of their own,
    # so they are found by the config file in their command line.
    subprocess.run(["pkill", "-KILL", "-f", str(config)], check=False)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not (folder / "pretrain/summary.json").exists(), "the run finished before it could be killed"


def plan_data(toy: Path, out: Path, test_tsv: Path, **benchmark) -> dict:
    probe = toy / "probe"
    return {
        "name": "edges", "output_dir": str(out),
        "model": {"vision": str(toy / "models/vision"), "llm": str(toy / "models/llm"), "select_layer": -1,
                  "template": "plain_v1", "max_length": 512},
        "pretrain": {"data": str(probe / "pretrain.json"), "global_batch": 8, "micro_batch": 8, "max_steps": 1},
        "finetune": {"data": str(probe / "finetune.json"), "global_batch": 8, "micro_batch": 8, "max_steps": 1},
        "grid": {"connectors": ["avgpool"], "resolutions": [32], "tokens": [4]},
        "benchmarks": [{"name": "probe", "data": str(test_tsv), "max_new_tokens": 4, **benchmark}],
    }


def build_model(tiny_dir, connector="mlp", **kw):
    torch.manual_seed(0)
    opts = kw.pop("connector_options", {})
    return MultimodalLM.build(ModelConfig(vision=str(tiny_dir / "clip"), llm=str(tiny_dir / "llm"), connector=connector,
                                          connector_options=opts, **kw))


def run_module(*args):
    """`python -m connectorlab ARGS` in a process of its own."""
    return subprocess.run([sys.executable, "-m", "connectorlab", *args], cwd=ROOT, capture_output=True, text=True)


def png(colour, size=(40, 30)):
    return Image.new("RGB", size, colour)


def b64(image):
    buf = io.BytesIO()
    image.save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode()
