"""Training throughput per engine: step time, tokens/s, MFU and peak memory per process, as JSON.

Models are built from configs (no download): `tiny` is the probe's CPU preset shape; `small` a ~40M-parameter LM whose
weights and optimizer state outweigh the process's own memory on a CPU (so that the engines' memory can be told apart
and checked against `study plan --estimate`'s model); `1b` is a ~1B-parameter shape (CLIP ViT-L/14-like tower at
336 px, a 24-layer 2048-wide Llama, 32k vocabulary) for a GPU. Each row also holds the memory model's estimate for
the same run and its error against the measured peak above the process's memory before the model was built. Each run is a real
`connectorlab train --stage finetune` under `accelerate launch` (the connector and the LM train, the tower is frozen),
so what is measured is what a user runs. `--kill-resume` also kills one run after its first checkpoint and resumes it.

    python benchmarks/train_throughput.py                  # tiny and small, CPU: DDP, FSDP, ZeRO-2, ZeRO-3, 2 processes
    python benchmarks/train_throughput.py --sizes tiny,1b --processes 1 --bf16 --gc both --kill-resume   # one GPU
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from connectorlab.utils.io import atomic_write_json  # noqa: E402

SIZES = {  # tower (image, patch, width, layers, heads) and LM (width, layers, heads, vocab)
    "tiny": {"image": 64, "patch": 8, "v_hidden": 64, "v_layers": 4, "v_heads": 4,
             "hidden": 128, "layers": 2, "heads": 4, "vocab": None},
    "small": {"image": 64, "patch": 8, "v_hidden": 128, "v_layers": 4, "v_heads": 4,
              "hidden": 512, "layers": 8, "heads": 8, "vocab": 8000},
    "1b": {"image": 336, "patch": 14, "v_hidden": 1024, "v_layers": 24, "v_heads": 16,
           "hidden": 2048, "layers": 24, "heads": 16, "vocab": 32000},
}


def prepare(root: Path, size: str, n_train: int) -> dict:
    from connectorlab.model.tiny import make_llm, make_vision, make_word_tokenizer
    from connectorlab.probe.generate import ProbeParams, generate, probe_texts, vocabulary

    s = SIZES[size]
    probe = root / "probe"
    if not (probe / "finetune.json").exists():
        generate(probe, ProbeParams(image_size=s["image"], n_train=n_train, n_test=1))
    models = root / f"models-{size}"
    if not (models / "llm/config.json").exists():
        tok = make_word_tokenizer(models / "llm", vocabulary(probe_texts(probe)))
        make_vision(models / "vision", "clip", image_size=s["image"], patch_size=s["patch"], hidden=s["v_hidden"],
                    layers=s["v_layers"], heads=s["v_heads"])
        make_llm(models / "llm", tok, hidden=s["hidden"], layers=s["layers"], heads=s["heads"], vocab_size=s["vocab"])
    return {"probe": probe, "vision": models / "vision", "llm": models / "llm"}


def write_config(root: Path, paths: dict, name: str, steps: int, micro: int, processes: int, sharding: str,
                 gc: bool, bf16: bool, checkpoint_every: int) -> Path:
    cfg = {"model": {"vision": str(paths["vision"]), "llm": str(paths["llm"]), "connector": "mlp", "select_layer": -1,
                     "template": "plain_v1", "max_length": 1024},
           "output_dir": str(root / name), "seed": 0, "checkpoint_every": checkpoint_every, "keep_checkpoints": 1,
           "sharding": sharding, "gradient_checkpointing": gc, "bf16": bf16,
           "finetune": {"data": str(paths["probe"] / "finetune.json"), "lr": 1e-4, "global_batch": micro * processes,
                        "micro_batch": micro, "max_steps": steps, "init_connector": "random", "image_workers": 2}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: Path, processes: int, *extra: str, zero: bool = False) -> subprocess.Popen:
    """`accelerate launch`; a one-process ZeRO run under torchrun (DeepSpeed needs a launcher's LOCAL_RANK, which
    `accelerate launch` sets for two processes or more only)."""
    tail = ["-m", "connectorlab", "train", "--config", str(config), "--stage", "finetune", *extra]
    if zero and processes == 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", str(free_port()),
               *tail]
    else:
        multi = ["--multi_gpu", "--main_process_port", str(free_port())] if processes > 1 else []
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--num_processes", str(processes), *multi, *tail]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // processes))}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finished(proc: subprocess.Popen, what: str) -> None:
    _, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{what} failed ({proc.returncode}):\n{err[-3000:]}")


def estimated(config: Path, processes: int, engine: str, gc: bool) -> dict:
    """The memory model's figure (`study plan --estimate`) for this very run, per process."""
    from connectorlab.connectors.describe import describe
    from connectorlab.model.shape import ModelShape
    from connectorlab.study.cost import measure as measure_workload
    from connectorlab.study.estimate import GIB, Sizes, stage_cost
    from connectorlab.training.config import TrainConfig

    cfg = TrainConfig.from_file(config)
    shape = ModelShape.read(cfg.model)
    grid = shape.grid(cfg.model)
    info = describe(cfg.model.connector, shape.vision_dim, shape.llm_dim, grid, **cfg.model.connector_options)
    cost = stage_cost(cfg, "finetune", Sizes.of(shape, grid, info["parameters"]), info["flops"], info["output_tokens"],
                      processes, measure_workload(Path(cfg.finetune.data), cfg.model), on_gpu=torch.cuda.is_available())
    return {"estimated_mb": cost.memory[engine][int(gc)] * GIB / 2**20,
            "estimated_parts_mb": {k: v * GIB / 2**20 for k, v in cost.breakdown[engine].items()}}


def measure(folder: Path) -> dict:
    summary = json.loads((folder / "finetune/summary.json").read_text())
    rows = [json.loads(line) for line in (folder / "finetune/log.jsonl").read_text().splitlines()]
    steady = rows[2:] or rows  # the first steps pay for allocation and warm-up
    return {"steps": len(rows), "step_time_s": statistics.median(r["step_time_s"] for r in steady),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
            "mfu": statistics.median(r["mfu"] for r in steady) if steady[0].get("mfu") is not None else None,
            "peak_memory_mb_per_process": summary["peak_memory_mb_per_process"], "final_loss": rows[-1]["loss"],
            "memory_before_model_mb_per_process": summary["memory_before_model_mb_per_process"],
            "training_memory_mb": max(p - b for p, b in zip(summary["peak_memory_mb_per_process"],
                                                             summary["memory_before_model_mb_per_process"], strict=True)),
            "trainable_parameters": summary["trainable_parameters"], "processes": summary["processes"]}


def kill_and_resume(config: Path, folder: Path, processes: int) -> dict:
    """Kill every process of the launch once a checkpoint exists, resume, and report where it resumed."""
    proc = launch(config, processes)
    ckpts = folder / "finetune/checkpoints"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not (ckpts.exists() and any(ckpts.glob("step-*"))):
        time.sleep(0.05)
    subprocess.run(["pkill", "-KILL", "-f", str(config)], check=False)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    finished(launch(config, processes, "--resume"), f"resume of {config.name}")
    summary = json.loads((folder / "finetune/summary.json").read_text())
    return {"resumed_from": summary["resumed_from"], "final_loss": measure(folder)["final_loss"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="tiny,small")
    ap.add_argument("--engines", default="ddp,fsdp,zero2,zero3")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--gc", choices=("off", "on", "both"), default="off", help="gradient checkpointing")
    ap.add_argument("--kill-resume", action="store_true")
    ap.add_argument("--n-train", type=int, default=256)
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/train_throughput.json"))
    args = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for size in args.sizes.split(","):
            paths = prepare(root, size, args.n_train)
            for engine in args.engines.split(","):
                for gc in {"off": [False], "on": [True], "both": [False, True]}[args.gc]:
                    name = f"{size}-{engine}-gc{int(gc)}"
                    config = write_config(root, paths, name, args.steps, args.micro_batch, args.processes,
                                          "none" if engine == "ddp" else engine, gc, args.bf16, 10**9)
                    finished(launch(config, args.processes, zero=engine.startswith("zero")), name)
                    row = {"size": size, "engine": engine, "gradient_checkpointing": gc, **measure(root / name),
                           **estimated(config, args.processes, engine, gc)}
                    row["memory_model_error"] = row["estimated_mb"] / row["training_memory_mb"] - 1
                    runs.append(row)
                    print(json.dumps(runs[-1]), flush=True)
            if args.kill_resume:
                name = f"{size}-fsdp-killed"
                config = write_config(root, paths, name, args.steps, args.micro_batch, args.processes, "fsdp", False,
                                      args.bf16, max(1, args.steps // 3))
                runs.append({"size": size, "engine": "fsdp", "kill_resume": kill_and_resume(config, root / name,
                                                                                           args.processes)})
                print(json.dumps(runs[-1]), flush=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    result = {"benchmark": "connectorlab train --stage finetune under accelerate launch", "device": device,
              "processes": args.processes, "micro_batch": args.micro_batch, "bf16": args.bf16, "runs": runs,
              "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "python": platform.python_version()}
    atomic_write_json(args.json, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
