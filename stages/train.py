"""Stage `train@<name>-<seed>`: train a model with no defense, and score it.

`clean` trains the reference model on the clean training set; an attack's name
trains on that attack's poisoned training set, as it is. One stage per training
seed (the `seeds` list in params.yaml).

Reads   data/dataset.npz, data/poisoned/<attack>/ ; params train.*
Writes  models/<name>/seed<k>/no_defense.pt
        metrics/scores/<name>/seed<k>/no_defense.json   the model's row of the results table
        logs/train/<name>/seed<k>/   per-epoch lr, train loss/accuracy, and for the curves only, CA and
                                     ASR on a fixed 1,000-image share of the test sets
"""
from __future__ import annotations

from backdoorlab import params
from backdoorlab.artifacts import check_model_name, test_sets, training_set
from backdoorlab.curves import Curves
from backdoorlab.evaluation import score
from backdoorlab.layout import log_dir, model_file, scores_file
from backdoorlab.models import new_model
from backdoorlab.runner import add_seed, phase, run_stage, stage_parser
from backdoorlab.runtime import Runtime
from backdoorlab.storage import save_checkpoint, save_json
from backdoorlab.training import TrainOptions, fit

PARAMS = params.TRAIN_KEYS
MONITOR_SIZE = 1000  # test images (and as many triggered ones) scored after every epoch for the curves


def main(args) -> None:
    name = check_model_name(args.name)
    p = params.load(PARAMS)
    opts = TrainOptions.from_params(p, seed=args.seed)
    with phase("data"):
        data = training_set(name)
        rt = Runtime.pick(p["train.precision"], p["train.arch"], opts.batch_size, p["train.threads"])
        x, y = rt.tensors(data.x, data.y)
        monitor, tests = test_sets(name, rt, MONITOR_SIZE), test_sets(name, rt)
    model = rt.prepare(new_model(p["train.arch"], data.x, len(data.classes), args.seed))
    with Curves(log_dir("train", name, args.seed)) as curves, phase("training"):
        fit(model, x, y, rt, opts, desc=f"train {name}",
            on_epoch=lambda epoch, stats: curves.log({**stats, **monitor.clean_and_attack(model, rt)}))
    with phase("evaluation"):
        row = score(model, rt, x, y, data.poison_indices, tests)
    save_checkpoint(model_file(name, args.seed), model.checkpoint(trained_on=name, seed=args.seed))
    save_json(scores_file(name, args.seed), {**row, "runtime": rt.describe()})
    print(f"train {name} seed {args.seed} ({rt.precision}): CA {row['test_acc']:.4f}"
          + (f", ASR {row['asr']:.4f}" if row.get("asr") is not None else "") + f" -> {model_file(name, args.seed)}")


if __name__ == "__main__":
    parser = stage_parser("train", __doc__)
    parser.add_argument("name", help="'clean' or an attack whose poison stage has run, e.g. badnets")
    add_seed(parser)
    run_stage(main, parser)
