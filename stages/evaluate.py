"""Stage `evaluate_clean` / `evaluate@<attack>`: score each model of a row of the results table.

For the clean model and, per attack, the no-defense and the ABL model: train
accuracy on the clean and on the poisoned part of the training set (labels as
trained), clean test accuracy (CA), the target class's own test accuracy, attack
success rate (ASR: non-target test images, triggered, classified as the target),
train loss (whole training set, as trained) and clean test loss.

Reads   data/dataset.npz, data/poisoned/<attack>/, models/clean.pt or models/<attack>/{no_defense,abl}.pt
Writes  metrics/evaluate/<name>.json
"""
from __future__ import annotations

import math

from backdoorlab.evaluation import training_fit
from backdoorlab.pipeline import (CLEAN, METRICS, check_run_name, load_model, model_file, run_stage, stage_parser,
                                  test_sets, training_set)
from backdoorlab.storage import save_json
from backdoorlab.training import Runtime

PARAMS: list[str] = []  # everything it needs comes from the artifacts it reads


def main(args) -> None:
    name = check_run_name(args.name)
    data = training_set(name)
    rt = Runtime.pick()
    tests = test_sets(name, rt)
    x, y = rt.tensors(data.x, data.y)
    kinds = ["no_defense"] if name == CLEAN else ["no_defense", "abl"]
    results = {}
    for kind in kinds:
        model = rt.prepare(load_model(model_file(name, kind)))
        row = {**training_fit(model, rt, x, y, data.poison_indices), **tests.clean_and_attack(model, rt)}
        results[kind] = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        print(f"evaluate {name} {kind}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if v == v))
    save_json(METRICS / "evaluate" / f"{name}.json", results)


if __name__ == "__main__":
    parser = stage_parser("evaluate", __doc__)
    parser.add_argument("name", help="'clean' or a registered attack, e.g. badnets")
    run_stage(main, parser)
