"""Stage `attacker`: train the input-aware attack's trigger generator, mask network and classifier.

Reads   data/dataset.npz ; params attack.target, attack.seed, attack.ia_* (p_attack, p_cross, lambda_div,
        mask_density, lambda_norm, epochs, lr_classifier, lr_generator),
        train.{arch,batch_size,momentum,weight_decay,augment,precision,threads}
Writes  models/attacker.pt         the trigger nets G and M (and the attacker's classifier)
        metrics/attacker.json      the attacker's own model: clean accuracy, attack success rate
                                   (non-target test images with their own trigger), cross-trigger
                                   accuracy (another image's trigger, true label expected)
        logs/attacker/             per-epoch curves
A non-finite loss stops training at once with the epoch named, and nothing is written.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from backdoorlab import metrics, params
from backdoorlab.attacks.input_aware import AttackerTraining, TriggerNets, apply_nets
from backdoorlab.curves import Curves
from backdoorlab.dataset import Dataset
from backdoorlab.layout import ATTACKER, ATTACKER_METRICS, DATASET, log_dir
from backdoorlab.models import new_model
from backdoorlab.runner import phase, require, run_stage, stage_parser
from backdoorlab.runtime import Runtime
from backdoorlab.storage import save_checkpoint, save_json
from backdoorlab.training import TrainOptions, fit, predict

PARAMS = ["attack.target", "attack.seed", "attack.ia_p_attack", "attack.ia_p_cross", "attack.ia_lambda_div",
          "attack.ia_mask_density", "attack.ia_lambda_norm", "attack.ia_epochs", "attack.ia_lr_classifier",
          "attack.ia_lr_generator"] + params.MODEL_KEYS


def attacker_scores(classifier, nets: TriggerNets, rt: Runtime, x: np.ndarray, y: np.ndarray, target: int) -> dict:
    """Clean accuracy, ASR with each image's own trigger, accuracy with another image's trigger."""
    def predictions(images: np.ndarray) -> np.ndarray:
        return predict(classifier, rt.tensors(images), rt).argmax(1).cpu().numpy()

    others = np.roll(np.arange(len(x)), len(x) // 2)
    non_target = y != target
    return {"clean_acc": metrics.accuracy(predictions(x), y),
            "attack_asr": metrics.attack_success_rate(predictions(apply_nets(nets, x[non_target], rt)),
                                                      y[non_target], target),
            "cross_trigger_acc": metrics.accuracy(predictions(apply_nets(nets, x, rt, x[others])), y)}


def main(args) -> None:
    p = params.load(PARAMS)
    opts = TrainOptions.from_params(p, seed=p["attack.seed"], epochs=p["attack.ia_epochs"],
                                    lr=p["attack.ia_lr_classifier"], schedule="cosine")
    require(DATASET)
    data = Dataset.load(DATASET)
    params.check_target(p["attack.target"], data.num_classes)
    if p["attack.ia_p_attack"] + p["attack.ia_p_cross"] > 1:
        raise params.ParamError(f"attack.ia_p_cross: got {p['attack.ia_p_cross']} with attack.ia_p_attack "
                                f"{p['attack.ia_p_attack']}; allowed: the two sum to at most 1")
    rt = Runtime.pick(p["train.precision"], p["train.arch"], opts.batch_size, p["train.threads"])
    classifier = rt.prepare(new_model(p["train.arch"], data.x_train, data.num_classes, opts.seed))
    nets = TriggerNets(data.x_train.shape[-1]).to(rt.device).train()
    training = AttackerTraining(nets, p["attack.target"], p["attack.ia_p_attack"], p["attack.ia_p_cross"],
                                p["attack.ia_lambda_div"], p["attack.ia_mask_density"], p["attack.ia_lambda_norm"])
    x, y = rt.tensors(data.x_train, data.y_train)
    pick = np.random.default_rng(0).permutation(len(data.y_test))[:1000]

    with Curves(log_dir("attacker", "input_aware")) as curves, phase("training"):
        def on_epoch(epoch: int, stats: dict) -> None:
            curves.log({**stats, **attacker_scores(classifier, nets, rt, data.x_test[pick], data.y_test[pick],
                                                   p["attack.target"])})
            nets.train()

        try:
            fit(classifier, x, y, rt, opts, batch_transform=training, on_epoch=on_epoch, desc="attacker",
                extra_optimizers=[torch.optim.Adam(nets.parameters(), lr=p["attack.ia_lr_generator"])])
        except FloatingPointError as exc:
            print(f"error: attacker training diverged ({exc}); nothing written. Lower attack.ia_lr_generator "
                  "or attack.ia_lr_classifier", file=sys.stderr)
            sys.exit(1)
    with phase("evaluation"):
        scores = attacker_scores(classifier, nets, rt, data.x_test, data.y_test, p["attack.target"])
    save_checkpoint(ATTACKER, {"nets": nets.checkpoint(), "classifier": classifier.checkpoint()})
    save_json(ATTACKER_METRICS, {**scores, "runtime": rt.describe()})
    print(f"attacker: {scores}")


if __name__ == "__main__":
    run_stage(main, stage_parser("attacker", __doc__))
