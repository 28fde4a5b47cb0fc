"""How much of the poison each round of ABL's feature expansion takes, scored against the true poison.

    cd demo && python -m benchmarks.expansion_rounds badnets blend --seeds 0 1 2
    cd cifar10-cpu && python -m benchmarks.expansion_rounds badnets --seeds 0 1 --output rounds.md

A research probe, not part of the pipeline. ABL's expansion (backdoorlab/defenses/abl.py,
`expand_in_features`) projects every example of the isolated label on a direction from
the rest of the label to the isolated few, cuts the projections with Otsu's threshold and
takes the direction again from what it found, for at most `abl.expand_rounds` rounds. This
reads the isolate stage's outputs in a configuration folder (the fine-tuned model, the
isolated indices, the learning speeds), reruns those rounds with the defense's own
functions and scores each against the poison indices (data/poisoned/<attack>/train.npz),
which the defense never sees: how many poisoned and clean examples each round's high side
holds, and what the unlearning would get (unlearned: the isolated and the fast examples of
the high side; learned as clean examples of the label: the half of the rest that
`abl.same_label_pool` picks, from the part `abl.same_label_from` names) if it kept that round; with `abl.expand: better_signal`, the side of
whichever split, features or learning speed, Otsu rates cleaner (the speed split's separation is printed
with each run). The row marked `kept` is the round the defense keeps (the best-separated
one); `last` is where the rounds ended.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from backdoorlab import params
from backdoorlab.artifacts import check_model_name, training_set
from backdoorlab.defenses.abl import FeatureSplit, feature_splits, features, label_confidence, learned_alongside, \
    speed_split, unlearned_sides
from backdoorlab.defenses.isolation import FINETUNED
from backdoorlab.layout import isolated_file, model_file
from backdoorlab.models import load_model
from backdoorlab.params import ParamError
from backdoorlab.runner import require
from backdoorlab.runtime import Runtime
from backdoorlab.storage import load_arrays
from benchmarks.probe_table import runs_parser, write_table

HEADER = ["| run | round | separation | high side: poisoned / clean | unlearned: poisoned / clean | "
          "learned as the label: poisoned / all |", "|---|---:|---:|---|---|---|"]


def unlearning_sets(split: FeatureSplit, isolated: np.ndarray, fast: np.ndarray, f: np.ndarray,
                    confidence: np.ndarray | None, combine: str = "both",
                    speed_separation: float = 0.0, unflagged: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Masks of what the unlearning would get if it kept this round: the examples it unlearns and those it learns
    as clean examples of the label, by the defense's own rule (abl.unlearned_sides; a test holds the probe's
    kept round to the defense's sets)."""
    suspect, rest, _ = unlearned_sides(split, isolated, fast, combine, speed_separation, unflagged)
    return isolated | suspect, learned_alongside(rest, split.projection, f, confidence)


def score_split(split: FeatureSplit, isolated: np.ndarray, fast: np.ndarray, f: np.ndarray,
                confidence: np.ndarray | None, poisoned: np.ndarray, combine: str = "both",
                speed_separation: float = 0.0, unflagged: bool = False) -> dict:
    """What the unlearning would get from this round, against the poison."""
    high = split.high
    forget, anchors = unlearning_sets(split, isolated, fast, f, confidence, combine, speed_separation, unflagged)
    return {"separation": split.separation, "high": (int((high & poisoned).sum()), int((high & ~poisoned).sum())),
            "unlearned": (int((forget & poisoned).sum()), int((forget & ~poisoned).sum())),
            "anchors": (int((anchors & poisoned).sum()), int(anchors.sum()))}


def probe(attack: str, seed: int, rounds: int, expand: str = "features",
          pool: str = "unsuspicious", same_label_from: str = "low_side") -> tuple[str, list[dict]]:
    """Every round of the expansion for one run: a description and one score per round. `expand` is
    `abl.expand` (features_alone: every example of the label counts as fast); `pool` is `abl.same_label_pool`,
    `same_label_from` `abl.same_label_from`."""
    p = params.load(params.MODEL_KEYS)
    data = training_set(check_model_name(attack))
    require(model_file(attack, seed, FINETUNED), isolated_file(attack, seed))
    isolation = load_arrays(isolated_file(attack, seed))
    chosen = isolation["indices"]
    if not len(chosen):
        return f"{attack} seed {seed}: nothing isolated", []
    rt = Runtime.pick(p["train.precision"], p["train.arch"], p["train.batch_size"], p["train.threads"])
    x = rt.tensors(data.x)
    label = int(np.bincount(data.y[chosen]).argmax())
    members = np.flatnonzero(data.y == label)
    poisoned = np.isin(members, data.poison_indices)
    model = rt.prepare(load_model(model_file(attack, seed, FINETUNED)))
    xm = x[torch.from_numpy(members).to(x.device)]
    f = features(model, xm, rt)
    confidence = label_confidence(model, xm, label, rt) if pool == "unsuspicious" else None
    isolated = np.isin(members, chosen)
    speed_separation, fast = speed_split(None if expand == "features_alone" else isolation["speed"], members)
    combine = "better" if expand == "better_signal" else "both"
    unflagged = same_label_from == "unflagged" and expand != "features_alone"  # as the defense: needs speeds
    scores = [score_split(s, isolated, fast, f, confidence, poisoned, combine, speed_separation, unflagged)
              for s in feature_splits(f, isolated, fast, rounds)]
    kept = max(range(len(scores)), key=lambda i: scores[i]["separation"])  # the defense's choice: first of ties
    for i, s in enumerate(scores):
        s["mark"] = ", ".join(m for m, on in (("kept", i == kept), ("last", i == len(scores) - 1)) if on)
    name = (f"{attack} seed {seed}: label {label}, {len(members)} examples, {int(poisoned.sum())} poisoned, "
            f"{int(isolated.sum())} isolated ({int((isolated & poisoned).sum())} poisoned), "
            f"{int(fast.sum())} fast ({int((fast & poisoned).sum())} poisoned; speed split's separation "
            f"{speed_separation:.3f})")
    return name, scores


def table(name: str, scores: list[dict]) -> list[str]:
    rows = [f"| {name} | | | | | |"] if not scores else []
    for i, s in enumerate(scores):
        rows.append(f"| {name if i == 0 else ''} | {i + 1}{' (' + s['mark'] + ')' if s['mark'] else ''} | "
                    f"{s['separation']:.3f} | {s['high'][0]} / {s['high'][1]} | "
                    f"{s['unlearned'][0]} / {s['unlearned'][1]} | {s['anchors'][0]} / {s['anchors'][1]} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = runs_parser("python -m benchmarks.expansion_rounds", __doc__)
    parser.add_argument("--rounds", type=int, help="rounds at most (default: the folder's abl.expand_rounds)")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.exit(2, "--rounds: an integer >= 1\n")
    try:
        for attack in args.attacks:
            check_model_name(attack)
        abl = params.load(["abl.expand_rounds", "abl.expand", "abl.same_label_pool", "abl.same_label_from"],
                          extra={"abl.expand_rounds": params.integer(1),
                                 "abl.expand": params.choice("features", "features_alone", "better_signal"),
                                 "abl.same_label_pool": params.choice("unsuspicious", "low_projection"),
                                 "abl.same_label_from": params.choice("low_side", "unflagged")})
        rounds, pool, source = args.rounds or abl["abl.expand_rounds"], abl["abl.same_label_pool"], \
            abl["abl.same_label_from"]
        write_table(args, f"rounds at most {rounds}, abl.expand: {abl['abl.expand']}, abl.same_label_pool: {pool}, "
                    f"abl.same_label_from: {source}", HEADER,
                    lambda attack, seed: table(*probe(attack, seed, rounds, abl["abl.expand"], pool, source)))
    except (ParamError, FileNotFoundError) as exc:
        parser.exit(2, f"{exc}\n")
    return 0

if __name__ == "__main__":
    sys.exit(main())
