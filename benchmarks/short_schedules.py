"""Does a shorter training schedule keep the clean model's accuracy? A recipe probe.

    cd cifar10-cpu && python -m backdoorlab.worker dvc repro data
    python -m benchmarks.short_schedules --variant epochs=8 --variant epochs=8,augment=flip \\
        --variant epochs=8,augment=flip,batch_size=64 --variant epochs=12,augment=flip \\
        --variant epochs=10,augment=flip,batch_size=64,label_smoothing=0.2

Trains the configuration's clean model (its `train.*` params, seed 0 unless `--seed`) once
per variant, each variant overriding some of `epochs`, `lr`, `batch_size`, `augment` and
`label_smoothing` (the share of each target spread over every class), and prints one JSON
line per variant: the clean test accuracy on the whole test set, the training accuracy seen
in each epoch, the wall time of the training and the machine. Not a stage and not part of
the pipeline: it writes nothing. It trains exactly as the `train`
stage does (the same options, model, runtime and random streams; the stage also scores a
1,000-image share of the test sets after each epoch, which changes no weight), so
editing the same values into params.yaml and running `python -m stages.train clean 0`
gives the same model.

It answers issue 11's question of whether `cifar10-cpu/` can train in fewer epochs for
the same accuracy, which is what a 45-minute table would need.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any, Callable

import torch

from backdoorlab import params
from backdoorlab.artifacts import test_sets, training_set
from backdoorlab.models import new_model
from backdoorlab.runtime import Runtime, cpu_family_model, cpu_model
from backdoorlab.training import THROUGHPUT, TrainOptions, fit


def checked(key: str, read: Callable[[str], Any]) -> Callable[[str], Any]:
    """Reads `key=text` as params.yaml's `train.<key>` would be: the same range and the same message."""
    spec = params.SCHEMA[f"train.{key}"]

    def parse(text: str) -> Any:
        try:
            value = read(text)
        except ValueError:
            value = text
        if not spec.check(value):
            raise argparse.ArgumentTypeError(f"{key}={text}: allowed: {spec.allowed}")
        return value
    return parse


OVERRIDES = {key: checked(key, read) for key, read in
             {"epochs": int, "lr": float, "batch_size": int, "augment": str, "label_smoothing": float}.items()}


def variant(text: str) -> dict:
    """'epochs=8,augment=flip' -> {'epochs': 8, 'augment': 'flip'}."""
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in OVERRIDES:
            raise argparse.ArgumentTypeError(f"{key!r}: allowed: {', '.join(OVERRIDES)}")
        out[key] = OVERRIDES[key](value)
    return out


def run(overrides: dict, seed: int) -> dict:
    p = params.load(params.TRAIN_KEYS)
    opts = TrainOptions.from_params(p, seed=seed, **overrides)
    data = training_set("clean")
    rt = Runtime.pick(p["train.precision"], p["train.arch"], opts.batch_size, p["train.threads"])
    x, y = rt.tensors(data.x, data.y)
    model = rt.prepare(new_model(p["train.arch"], data.x, len(data.classes), seed))
    epochs: list[float] = []
    THROUGHPUT.images, THROUGHPUT.seconds = 0, 0.0
    start = time.perf_counter()
    fit(model, x, y, rt, opts, desc="probe",
        on_epoch=lambda epoch, stats: epochs.append(round(stats["train_acc"], 4)))
    wall = time.perf_counter() - start
    clean = test_sets("clean", rt).clean_and_attack(model, rt)
    return {"variant": overrides, "seed": seed, "arch": p["train.arch"], "precision": rt.precision,
            "train_images": len(y), "test_acc": round(clean["test_acc"], 4), "train_acc_per_epoch": epochs,
            "training_s": round(wall, 1), "images_per_s": round(THROUGHPUT.images / THROUGHPUT.seconds),
            "cpu": cpu_model(), "family_model": cpu_family_model(), "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.short_schedules",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", type=variant, action="append", required=True,
                        help="comma-separated overrides of epochs, lr, batch_size, augment (crop_flip|crop|flip|none), "
                             "and label_smoothing (0 <= share < 1); the rest are params.yaml's")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for overrides in args.variant:
        print(json.dumps(run(overrides, args.seed)), flush=True)


if __name__ == "__main__":
    main()
