import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from connectorlab.model.tiny import make_bpe_tokenizer, make_llm, make_vision  # noqa: E402
from connectorlab.probe.generate import ProbeParams, generate  # noqa: E402
from connectorlab.probe.presets import TinySizes, make_random_presets  # noqa: E402

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


ROOT = Path(__file__).resolve().parents[1]
SIZES = TinySizes(vision_hidden=32, vision_layers=2, vision_heads=2, llm_hidden=64, llm_layers=2, llm_heads=2)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    generate(root / "probe", ProbeParams(seed=1, image_size=32, n_train=64, n_test=4))
    make_random_presets(root / "probe", root / "models", image_size=32, sizes=SIZES)
    return root


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
