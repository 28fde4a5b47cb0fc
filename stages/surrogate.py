"""Stage `surrogate`: train the model the clean-label attack runs PGD against.

Trains on the clean training set, with standard training or (surrogate.adversarial)
PGD adversarial training, Madry-style: every batch is replaced by its PGD
perturbation within surrogate.adv_eps (0..255 units, l_inf). Adversarially trained
surrogates make far stronger clean-label poisons (Turner et al. 2019).

Reads   data/dataset.npz ; params surrogate.*, train.{batch_size,momentum,weight_decay,augment,precision,seed}
Writes  models/surrogate.pt
        metrics/surrogate.json   clean test accuracy, and accuracy under the same PGD on 1,000 test images
        logs/surrogate/          per-epoch curves
"""
from __future__ import annotations

import numpy as np

from backdoorlab import params
from backdoorlab.datasets import Dataset
from backdoorlab.pgd import pgd
from backdoorlab.pipeline import (DATASET, LOGS, METRICS, MONITOR_SIZE, EpochLog, new_model, require, run_stage,
                                  stage_parser, test_sets)
from backdoorlab.storage import save_checkpoint, save_json
from backdoorlab.training import Runtime, TrainingConfig, fit, predict

PARAMS = ["surrogate.arch", "surrogate.epochs", "surrogate.lr", "surrogate.adversarial", "surrogate.adv_eps",
          "surrogate.adv_step", "surrogate.adv_steps", "train.batch_size", "train.momentum",
          "train.weight_decay", "train.augment", "train.precision", "train.seed"]
ROBUST_SAMPLE = 1000


def main(args) -> None:
    p = params.load(PARAMS)
    cfg = TrainingConfig(p["surrogate.arch"], p["train.batch_size"], p["train.momentum"], p["train.weight_decay"],
                         p["train.augment"], p["train.precision"], p["train.seed"])
    require(DATASET)
    data = Dataset.load(DATASET)
    rt = Runtime.pick(cfg.precision)
    model = rt.prepare(new_model(cfg.arch, data.x_train, data.num_classes, cfg.seed))
    x, y = rt.tensors(data.x_train, data.y_train)
    attack = dict(norm="linf", eps=p["surrogate.adv_eps"] / 255, step=p["surrogate.adv_step"] / 255,
                  steps=p["surrogate.adv_steps"], random_start=True)

    def adversarial(xb, yb):
        with rt.amp():
            return pgd(model, xb, yb, **attack), yb, None

    monitor = test_sets("clean", rt, MONITOR_SIZE)
    log = EpochLog(LOGS / "surrogate")
    fit(model, x, y, rt, cfg, epochs=p["surrogate.epochs"], lr=p["surrogate.lr"], schedule="cosine",
        batch_transform=adversarial if p["surrogate.adversarial"] else None, desc="surrogate",
        on_epoch=lambda e, s: log.log({**s, **monitor.clean_and_attack(model, rt)}))

    clean = test_sets("clean", rt).clean_and_attack(model, rt)
    pick = np.random.default_rng(0).permutation(len(data.y_test))[:ROBUST_SAMPLE]
    xs, ys = rt.tensors(data.x_test[pick], data.y_test[pick])
    with rt.amp():
        adv = pgd(model, rt.model_input(xs), ys, **attack)
    robust = (predict(model, (adv.permute(0, 2, 3, 1) * 255).round().to(xs.dtype), rt).argmax(1) == ys)
    summary = {"adversarial": p["surrogate.adversarial"], "test_acc": clean["test_acc"],
               "pgd_test_acc": robust.float().mean().item(), "pgd_eps": p["surrogate.adv_eps"]}
    save_checkpoint("models/surrogate.pt", model.checkpoint(trained_on="clean", adversarial=summary["adversarial"]))
    save_json(METRICS / "surrogate.json", summary)
    print(f"surrogate: {summary}")


if __name__ == "__main__":
    run_stage(main, stage_parser("surrogate", __doc__))
