"""The GPU check of the training engines, meant for under 10 minutes on one GPU: the tiny and the ~1B shape through
DDP, FSDP, ZeRO-2 and ZeRO-3 with one process each, bf16, with and without gradient checkpointing, one FSDP run killed
and resumed; step time, tokens/s, MFU, peak memory and the memory model's estimate as JSON in
benchmarks/results/gpu_check.json.

    python benchmarks/gpu_check.py
"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    sys.exit(subprocess.call([sys.executable, str(ROOT / "benchmarks/train_throughput.py"), "--sizes", "tiny,1b",
                              "--engines", "ddp,fsdp,zero2,zero3", "--processes", "1", "--bf16", "--gc", "both", "--kill-resume",
                              "--steps", "20", "--micro-batch", "8", "--json", str(ROOT / "benchmarks/results/gpu_check.json"),
                              *sys.argv[1:]]))
