"""Would ABL's unlearning remove the backdoor if it were handed all the poison? A diagnostic.

    cd demo && python -m benchmarks.unlearn_oracle input_aware --seeds 0 1 2

A research probe, not part of the pipeline, and not a defense: it reads the true poison
indices (data/poisoned/<attack>/train.npz), which the defense never sees. For each seed it
starts from the isolate stage's fine-tuned model and runs `abl`'s unlearning
(backdoorlab/defenses/abl.py, `unlearn`, with the folder's `abl.*` params) three ways:

- as run: on the isolated examples, with the defense's own expansion (this reproduces the
  defend_abl stage's model before its kept-cost guard; a check that the probe mirrors it);
- clean anchors: the defense's expansion, but the poisoned examples it would learn as clean
  examples of the label ("anchors") left out of them: does the poison among the anchors keep
  the backdoor?
- oracle: on every poisoned example, without expansion (`abl.expand: none`), so the clean
  examples of the label are learned alongside and no poison is among them.

Then each model is scored like every other (CA, ASR on the triggered test images). If the
oracle removes the backdoor where the defense does not, what the defense lacks is finding
the poison; if the oracle does not either, the unlearning itself does not generalise to the
trigger.
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys

import numpy as np

from backdoorlab import params
from backdoorlab.artifacts import check_model_name, test_sets, training_set
from backdoorlab.defenses import abl, defense_class, param_keys
from backdoorlab.defenses.abl import Expansion, UnlearningConfig, unlearn
from backdoorlab.defenses.isolation import FINETUNED
from backdoorlab.evaluation import score
from backdoorlab.layout import isolated_file, model_file
from backdoorlab.models import load_model
from backdoorlab.runner import require
from backdoorlab.runtime import Runtime
from backdoorlab.storage import load_arrays
from backdoorlab.training import TrainOptions
from benchmarks.probe_table import table_probe_main

HEADER = ["| run | unlearned on | unlearned: poisoned / clean | learned as the label: poisoned / all | "
          "stopped (epoch) | CA % | ASR % |", "|---|---|---|---|---|---:|---:|"]


@contextlib.contextmanager
def expansion_seen(poisoned: np.ndarray, drop_poisoned_anchors: bool, seen: dict):
    """Run the defense's own expansion, note what it returns (scored against the poison), and optionally
    leave the poisoned examples out of its anchors: the probe wraps abl.expand_in_features, which unlearn()
    looks up when it runs."""
    original = abl.expand_in_features

    def wrapped(*args, **kwargs) -> Expansion:
        split = original(*args, **kwargs)
        anchors = split.anchors[~np.isin(split.anchors, poisoned)] if drop_poisoned_anchors else split.anchors
        seen.update(forget=split.forget, anchors=anchors)
        return Expansion(split.forget, anchors, split.separation)

    abl.expand_in_features = wrapped
    try:
        yield
    finally:
        abl.expand_in_features = original


def no_curves(model, stats: dict) -> None:
    """unlearn()'s per-epoch log: the probe draws no curves."""


def abl_config() -> tuple[dict, UnlearningConfig]:
    cls = defense_class("abl")
    p = params.load(params.MODEL_KEYS + param_keys("abl"), extra={f"abl.{k}": spec for k, spec in cls.knobs.items()})
    return p, UnlearningConfig(**{k: p[f"abl.{k}"] for k in cls.knobs})


def probe(attack: str, seed: int) -> list[str]:
    p, cfg = abl_config()
    data = training_set(check_model_name(attack))
    require(model_file(attack, seed, FINETUNED), isolated_file(attack, seed))
    isolation = load_arrays(isolated_file(attack, seed))
    opts = TrainOptions.from_params(p, seed=seed)
    rt = Runtime.pick(p["train.precision"], p["train.arch"], opts.batch_size, p["train.threads"])
    x, y = rt.tensors(data.x, data.y)
    tests = test_sets(attack, rt)
    poisoned = np.asarray(data.poison_indices, dtype=np.int64)
    variants = [("isolated (as run)", isolation["indices"], cfg, False),
                ("isolated, clean anchors", isolation["indices"], cfg, True),
                ("all poison (oracle)", poisoned, dataclasses.replace(cfg, expand="none"), False)]
    labels = data.y
    rows = []
    for name, chosen, config, drop in variants:
        if not len(chosen):
            rows.append(f"| {attack} seed {seed} | {name} | nothing | | | | |")
            continue
        model = rt.prepare(load_model(model_file(attack, seed, FINETUNED)))

        seen: dict = {}
        with expansion_seen(poisoned, drop, seen):
            summary = unlearn(model, x, y, chosen, isolation["holdout"], rt, opts, config, no_curves,
                              isolation["speed"])
        row = score(model, rt, x, y, poisoned, tests)
        if seen:
            forget, anchors = seen["forget"], seen["anchors"]
        else:  # expand: none: the chosen are unlearned, the rest of their label learned alongside
            forget = np.asarray(chosen)
            anchors = np.setdiff1d(np.flatnonzero(np.isin(labels, labels[forget])), forget)
        anchors = np.setdiff1d(anchors, isolation["holdout"])  # as unlearn() does: held out, never learned
        rows.append(f"| {attack} seed {seed} | {name} | {count(forget, poisoned)} | "
                    f"{int(np.isin(anchors, poisoned).sum())} / {len(anchors)} | "
                    f"{summary['stopped_by']} ({summary['epochs']}) | "
                    f"{100 * row['test_acc']:.1f} | {100 * row['asr']:.1f} |")
    return rows


def count(indices: np.ndarray, poisoned: np.ndarray) -> str:
    hit = np.isin(indices, poisoned)
    return f"{int(hit.sum())} / {int((~hit).sum())}"


def main(argv: list[str] | None = None) -> int:
    return table_probe_main("python -m benchmarks.unlearn_oracle", __doc__, HEADER, probe, argv)


if __name__ == "__main__":
    sys.exit(main())
