"""Benchmark: demo wall time, training throughput per model, peak memory.

    python -m benchmarks.bench                 # everything (about 5 minutes on 2 cores)
    python -m benchmarks.bench --skip-demo     # throughput only
    python -m benchmarks.bench --models wrn16-1 --precisions fp32 bf16

Throughput is measured on the real training step (batched crop+flip on the device,
forward, backward, SGD) with random 32x32 RGB images, after a warm-up. The demo runs
`dvc repro` on a fresh copy of demo/ so nothing is cached. Figures are printed, never
asserted: timing belongs here, not in the tests.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # figures only, no progress bars between them

import numpy as np
import torch

from backdoorlab.models import ARCHITECTURES
from backdoorlab.pipeline import new_model
from backdoorlab.training import Runtime, TrainingConfig, train_epoch

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def throughput(arch: str, precision: str, images: int, batch_size: int) -> float:
    rt = Runtime.pick(precision)
    cfg = TrainingConfig(arch, batch_size, 0.9, 5e-4, "crop_flip", precision, 0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, images)
    model = rt.prepare(new_model(arch, x, 10, 0))
    xt, yt = rt.tensors(x, y)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator(device=rt.device).manual_seed(0)
    train_epoch(model, xt[: 2 * batch_size], yt[: 2 * batch_size], optimizer, rt, cfg, gen)  # warm-up
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    train_epoch(model, xt, yt, optimizer, rt, cfg, gen)
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


PEAK_OF_CHILDREN = ("import resource, subprocess, sys; "
                    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
                    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def demo_wall_time() -> tuple[float, float]:
    """Seconds and peak child RSS (MiB) of `dvc repro` on a fresh copy of the demo."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "demo"
        work.mkdir()
        shutil.copy(ROOT / "dvc.yaml", work / "dvc.yaml")
        shutil.copy(ROOT / "demo" / "params.yaml", work / "params.yaml")
        for package in ("stages", "backdoorlab"):
            shutil.copytree(ROOT / package, work / package, ignore=shutil.ignore_patterns("__pycache__"))
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               "DVC_NO_ANALYTICS": "1", "TQDM_DISABLE": "1", "DVC_SITE_CACHE_DIR": str(Path(tmp) / "site")}
        subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=work, env=env, check=True)
        start = time.perf_counter()
        # A fresh, small Python parent: Linux copies a parent's peak RSS into the children it forks, so
        # measuring from this process (torch loaded, models trained) would report our own peak instead.
        done = subprocess.run([sys.executable, "-c", PEAK_OF_CHILDREN, sys.executable, "-m", "dvc", "repro", "-q"],
                              cwd=work, env=env, check=True, capture_output=True, text=True)
        return time.perf_counter() - start, int(done.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=sorted(ARCHITECTURES), choices=sorted(ARCHITECTURES))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--images", type=int, default=1024, help="images per timed epoch (default 1024)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--skip-demo", action="store_true")
    args = parser.parse_args()

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    print(f"machine: {device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"training throughput, 32x32x3, batch {args.batch_size} (images/s):")
    for arch in args.models:
        row = []
        for precision in args.precisions:
            row.append(f"{precision} {throughput(arch, precision, args.images, args.batch_size):7.0f}")
        print(f"  {arch:10s} " + "   ".join(row), flush=True)
    print(f"peak memory of the throughput runs: {peak_rss_mib():.0f} MiB")
    if not args.skip_demo:
        seconds, child_mib = demo_wall_time()
        print(f"demo (`dvc repro` in a fresh copy of demo/): {seconds:.0f} s wall, "
              f"peak memory of one stage {child_mib:.0f} MiB")


if __name__ == "__main__":
    main()
