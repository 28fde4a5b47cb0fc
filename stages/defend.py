"""Stage `defend_<defense>@<attack>-<seed>`: train a defended model on an attack's poisoned data, and score it.

The defense (backdoorlab/defenses/<defense>.py) gets the poisoned training set as it
is, the artifacts it names, and a logging callback; never the poison indices, the
trigger or the test sets. The stage then scores the returned model like every other.

Reads   data/dataset.npz, data/poisoned/<attack>/, the defense's inputs (for ABL: the isolate stage's
        outputs and the no-defense model, returned as it is when nothing was isolated);
        params train.{arch,batch_size,momentum,weight_decay,augment,precision,threads}, <defense>.*
Writes  models/<attack>/seed<k>/<defense>.pt
        metrics/scores/<attack>/seed<k>/<defense>.json   the model's row of the results table, and the
                                                          defense's own summary (e.g. when it stopped)
        logs/<defense>/<attack>/seed<k>/   per-epoch curves of the defense (CA and ASR for the curves only)
"""
from __future__ import annotations

from backdoorlab import params
from backdoorlab.artifacts import check_model_name, test_sets, training_set
from backdoorlab.curves import Curves
from backdoorlab.defenses import defense_class, param_keys
from backdoorlab.defenses.base import DefenseJob
from backdoorlab.evaluation import score
from backdoorlab.layout import log_dir, model_file, scores_file
from backdoorlab.runner import add_seed, phase, require, run_stage, stage_parser
from backdoorlab.runtime import Runtime
from backdoorlab.storage import save_checkpoint, save_json
from backdoorlab.training import TrainOptions

MONITOR_SIZE = 1000  # test images (and as many triggered ones) scored per epoch for the curves


def main(args) -> None:
    cls = defense_class(args.defense)
    attack = check_model_name(args.attack)
    p = params.load(params.MODEL_KEYS + param_keys(args.defense),
                    extra={f"{args.defense}.{k}": spec for k, spec in cls.knobs.items()})
    defense = cls(args.defense, {k: p[f"{args.defense}.{k}"] for k in cls.knobs})
    require(*defense.inputs(attack, args.seed))
    opts = TrainOptions.from_params(p, seed=args.seed)
    with phase("data"):
        data = training_set(attack)
        rt = Runtime.pick(p["train.precision"], p["train.arch"], opts.batch_size, p["train.threads"])
        x, y = rt.tensors(data.x, data.y)
        monitor, tests = test_sets(attack, rt, MONITOR_SIZE), test_sets(attack, rt)
    with Curves(log_dir(args.defense, attack, args.seed)) as curves, phase("training"):
        def log(model, stats: dict) -> None:  # returns nothing: the defense never sees test scores
            curves.log({**stats, **monitor.clean_and_attack(model, rt)})

        model, summary = defense.defend(DefenseJob(attack, args.seed, x, y, len(data.classes), rt, opts,
                                                   p["train.arch"], log))
    with phase("evaluation"):
        row = score(model, rt, x, y, data.poison_indices, tests)
    save_checkpoint(model_file(attack, args.seed, args.defense),
                    model.checkpoint(trained_on=attack, seed=args.seed, defense=args.defense))
    save_json(scores_file(attack, args.seed, args.defense), {**row, "defense": summary, "runtime": rt.describe()})
    print(f"{args.defense} {attack} seed {args.seed}: CA {row['test_acc']:.4f}, ASR {row['asr']:.4f} {summary}")


if __name__ == "__main__":
    parser = stage_parser("defend", __doc__)
    parser.add_argument("defense", help="a registered defense, e.g. abl")
    parser.add_argument("attack", help="an attack whose poison stage has run, e.g. badnets")
    add_seed(parser)
    run_stage(main, parser)
