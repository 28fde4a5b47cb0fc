"""Stage `score_clean@<attack>-<seed>`: the clean reference model, scored on an attack's data sets.

A model that never saw poison still sends some triggered images to the target class:
a blended image carries a faint copy of another picture, a SIG stripe or an
input-aware mask can look like part of the target. That share is the floor of the
attack success rate, what no defense needs to go below, and it is the row the
attack's other rows are read against. The clean model of the same training seed is
scored exactly as the attack's own models are (same metrics, same precision), on the
attack's training set (its poisoned part with the labels the attacker gave it) and
its triggered test images. Scoring only: it trains nothing and decides nothing.

Reads   models/clean/seed<k>/no_defense.pt, data/dataset.npz, data/poisoned/<attack>/ ;
        params train.{arch,batch_size,precision,threads}
Writes  metrics/scores/<attack>/seed<k>/clean_model.json   the attack's "clean model" row of the table
"""
from __future__ import annotations

from backdoorlab import params
from backdoorlab.artifacts import check_model_name, read_model, test_sets, training_set
from backdoorlab.evaluation import score
from backdoorlab.layout import CLEAN, CLEAN_MODEL, model_file, scores_file
from backdoorlab.params import ParamError
from backdoorlab.runner import add_seed, phase, run_stage, stage_parser
from backdoorlab.runtime import Runtime
from backdoorlab.storage import save_json

# the precision and thread count the clean model trained in
PARAMS = ["train.arch", "train.batch_size", "train.precision", "train.threads"]


def main(args) -> None:
    attack = check_model_name(args.attack)
    if attack == CLEAN:
        raise ParamError(f"attack: {attack!r} is the clean model itself; allowed: an attack whose poison stage ran")
    p = params.load(PARAMS)
    with phase("data"):
        data = training_set(attack)
        rt = Runtime.pick(p["train.precision"], p["train.arch"], p["train.batch_size"], p["train.threads"])
        x, y = rt.tensors(data.x, data.y)
        tests = test_sets(attack, rt)
        model = rt.prepare(read_model(model_file(CLEAN, args.seed)))
    with phase("evaluation"):
        row = score(model, rt, x, y, data.poison_indices, tests)
    save_json(scores_file(attack, args.seed, CLEAN_MODEL), {**row, "runtime": rt.describe()})
    print(f"clean model seed {args.seed} on {attack} ({rt.precision}): CA {row['test_acc']:.4f}, "
          f"ASR {row['asr']:.4f} -> {scores_file(attack, args.seed, CLEAN_MODEL)}")


if __name__ == "__main__":
    parser = stage_parser("score_clean", __doc__)
    parser.add_argument("attack", help="an attack whose poison stage has run, e.g. badnets")
    add_seed(parser)
    run_stage(main, parser)
