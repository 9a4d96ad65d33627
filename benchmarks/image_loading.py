"""Image decoding throughput: inline (the training loop's own thread) vs `ImageLoader` threads.

Training without a feature cache (an unfrozen tower, or a dataset too large to cache) decodes every
image of every step; LLaVA's data are JPEGs of a few hundred pixels, resized to the tower's side.
This writes such JPEGs (seeded noise over gradients, 640 x 480), then times decode + LLaVA pad +
resize to 336 px + normalise for the same list of images with 0, 2 and 4 workers, submitting one
batch ahead as the trainer does. Prints and saves JSON.

    python benchmarks/image_loading.py [--images 256] [--batch 16] [--out benchmarks/results/image_loading.json]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from connectorlab.data.images import ImageLoader  # noqa: E402
from connectorlab.utils.io import atomic_write_json  # noqa: E402
from connectorlab.vision.transforms import ImageTransform  # noqa: E402


def write_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    yy, xx = np.mgrid[0:480, 0:640]
    for i in range(n):
        base = np.stack([xx / 640 * 255, yy / 480 * 255, np.full_like(xx, (i * 37) % 255)], -1)
        pixels = (base + rng.normal(0, 25, base.shape)).clip(0, 255).astype(np.uint8)
        paths.append(folder / f"{i:05d}.jpg")
        Image.fromarray(pixels).save(paths[-1], quality=90)
    return paths


def run(paths: list[Path], batch: int, workers: int) -> float:
    transform = ImageTransform(336, "pad")
    batches = [paths[i:i + batch] for i in range(0, len(paths), batch)]
    t0 = time.perf_counter()
    with ImageLoader(transform, workers) as loader:
        ahead = loader.submit(batches[0])
        for n in range(len(batches)):
            pixels, ahead = ahead(), (loader.submit(batches[n + 1]) if n + 1 < len(batches) else None)
            assert pixels.shape == (len(batches[n]), 3, 336, 336)
    return len(paths) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "image_loading.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(Path(tmp), args.images)
        run(paths[: args.batch], args.batch, 0)  # warm the page cache and imports
        rates = {}
        for workers in (0, 2, 4):
            rates[workers] = run(paths, args.batch, workers)
            print(f"workers={workers}: {rates[workers]:.1f} images/s", flush=True)
    result = {
        "benchmark": "decode + pad + resize to 336 px + normalise, 640x480 JPEGs, one batch submitted ahead",
        "images": args.images, "batch": args.batch,
        "images_per_s": {str(k): round(v, 1) for k, v in rates.items()},
        "speedup_vs_inline": {str(k): round(v / rates[0], 2) for k, v in rates.items()},
        "cpu_count": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
    }
    atomic_write_json(Path(args.out), result)
    print(f"speed-up over inline decoding: {result['speedup_vs_inline']}")


if __name__ == "__main__":
    main()
