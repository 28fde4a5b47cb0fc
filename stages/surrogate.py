"""Stage `surrogate`: train the model the clean-label attack runs PGD against.

Trains on the clean training set, with standard training or (surrogate.adversarial)
PGD adversarial training, Madry-style: every batch is replaced by its PGD
perturbation within surrogate.adv_eps (0..255 units, l_inf). Adversarially trained
surrogates make far stronger clean-label poisons (Turner et al. 2019).

Reads   data/dataset.npz ; params surrogate.*, attack.seed,
        train.{batch_size,momentum,weight_decay,augment,precision,threads}
Writes  models/surrogate.pt
        metrics/surrogate.json   clean test accuracy, and accuracy under the same PGD on 1,000 test images
        logs/surrogate/          per-epoch curves
"""
from __future__ import annotations

import numpy as np

from backdoorlab import params
from backdoorlab.artifacts import test_sets
from backdoorlab.curves import Curves
from backdoorlab.dataset import Dataset
from backdoorlab.layout import DATASET, SURROGATE, SURROGATE_METRICS, log_dir
from backdoorlab.models import new_model
from backdoorlab.pgd import pgd
from backdoorlab.runner import phase, require, run_stage, stage_parser
from backdoorlab.runtime import Runtime
from backdoorlab.storage import save_checkpoint, save_json
from backdoorlab.training import TrainOptions, fit, predict

PARAMS = ["surrogate.arch", "surrogate.epochs", "surrogate.lr", "surrogate.adversarial", "surrogate.adv_eps",
          "surrogate.adv_step", "surrogate.adv_steps", "attack.seed", "train.batch_size", "train.momentum",
          "train.weight_decay", "train.augment", "train.precision", "train.threads"]
ROBUST_SAMPLE = 1000


def main(args) -> None:
    p = params.load(PARAMS)
    opts = TrainOptions.from_params(p, seed=p["attack.seed"], epochs=p["surrogate.epochs"],
                                    lr=p["surrogate.lr"], schedule="cosine")
    require(DATASET)
    data = Dataset.load(DATASET)
    rt = Runtime.pick(p["train.precision"], p["surrogate.arch"], opts.batch_size, p["train.threads"])
    model = rt.prepare(new_model(p["surrogate.arch"], data.x_train, data.num_classes, opts.seed))
    x, y = rt.tensors(data.x_train, data.y_train)
    attack = dict(norm="linf", eps=p["surrogate.adv_eps"] / 255, step=p["surrogate.adv_step"] / 255,
                  steps=p["surrogate.adv_steps"], random_start=True)

    def adversarial(xb, yb):
        with rt.amp():
            return pgd(model, xb, yb, **attack), yb, None

    monitor = test_sets("clean", rt, 1000)
    with Curves(log_dir("surrogate", "clean")) as curves, phase("training"):
        fit(model, x, y, rt, opts, batch_transform=adversarial if p["surrogate.adversarial"] else None,
            desc="surrogate", on_epoch=lambda e, s: curves.log({**s, **monitor.clean_and_attack(model, rt)}))

    with phase("evaluation"):
        clean = test_sets("clean", rt).clean_and_attack(model, rt)
        pick = np.random.default_rng(0).permutation(len(data.y_test))[:ROBUST_SAMPLE]
        xs, ys = rt.tensors(data.x_test[pick], data.y_test[pick])
        with rt.amp():
            adv = pgd(model, rt.model_input(xs), ys, **attack)
        robust = (predict(model, (adv.permute(0, 2, 3, 1) * 255).round().to(xs.dtype), rt).argmax(1) == ys)
    summary = {"adversarial": p["surrogate.adversarial"], "test_acc": clean["test_acc"],
               "pgd_test_acc": robust.float().mean().item(), "pgd_eps": p["surrogate.adv_eps"]}
    save_checkpoint(SURROGATE, model.checkpoint(trained_on="clean", adversarial=summary["adversarial"]))
    save_json(SURROGATE_METRICS, {**summary, "runtime": rt.describe()})
    print(f"surrogate: {summary}")


if __name__ == "__main__":
    run_stage(main, stage_parser("surrogate", __doc__))
