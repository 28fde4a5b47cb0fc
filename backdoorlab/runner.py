"""How a stage starts and fails: its command line, missing inputs, one-line errors, and its timings.

A bad param or data source stops a stage with one line on stderr and exit code 2,
before anything is written. When BACKDOORLAB_TIMINGS names a file, each stage
appends one JSON line there with its wall time split into phases (start-up, data,
training, evaluation, pictures) and the images per second its training got: the
benchmark reads it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterator

from .params import ParamError


def process_age() -> float:
    """Seconds since this process started (Linux), i.e. how long interpreter start-up and imports took."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


class Timings:
    """Wall time per phase of one stage; `with TIMINGS.phase("training"):` adds to a phase."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def record(self, stage: str, startup: float) -> dict:
        training = sys.modules.get("backdoorlab.training")  # only stages that train have images to count
        images, seconds = (training.THROUGHPUT.images, training.THROUGHPUT.seconds) if training else (0, 0.0)
        total = time.perf_counter() - self.started
        phases = {"startup": startup, **self.seconds}
        phases["other"] = max(0.0, total - sum(self.seconds.values()))
        return {"stage": stage, "wall_s": round(startup + total, 3),
                "phases_s": {k: round(v, 3) for k, v in phases.items()},
                "trained_images": images, "train_images_per_s": round(images / seconds, 1) if seconds else None}


TIMINGS = Timings()


def stage_parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"python -m stages.{prog}", description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_seed(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("seed", type=int, help="the training seed (one of the `seeds` list in params.yaml)")


def run_stage(main: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser) -> None:
    """Parse arguments and run; a bad param or data source (a ParamError) exits 2 with one line on stderr."""
    startup = process_age()
    args = parser.parse_args()
    TIMINGS.started = time.perf_counter()
    os.environ.setdefault("TQDM_MININTERVAL", "1")
    try:
        main(args)
    except ParamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    log = os.environ.get("BACKDOORLAB_TIMINGS")
    if log:
        name = " ".join([parser.prog.split()[-1], *[str(v) for v in vars(args).values()]])
        with open(log, "a") as out:
            out.write(json.dumps({**TIMINGS.record(name, startup), "cwd": os.getcwd()}) + "\n")


def phase(name: str):
    """Time a block as one of the stage's phases (data, training, evaluation, pictures)."""
    return TIMINGS.phase(name)


def require(*paths: str | Path) -> None:
    """Inputs from earlier stages must exist; say so in one line if one does not."""
    for path in paths:
        if not Path(path).exists():
            raise ParamError(f"{path}: missing; run `dvc repro` so the stage that writes it runs first")
