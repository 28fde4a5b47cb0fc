"""Defenses, found by name. A new defense is one module here, one line in DEFENSES, its stage block
in dvc.yaml and its params group (named like the defense); the stage, the scoring and the report
pick it up from here.

The registry names modules instead of importing them, so a stage imports only the defense it runs.
One module may register several entries: each entry reads its own params group, so the paper's
ABL and this project's ABL are the same code configured twice.
"""
from __future__ import annotations

from importlib import import_module

from ..params import ParamError

DEFENSES: dict[str, str] = {  # name (= its params group) -> "module:class"; this order is the table's order
    "abl": "abl:ABL",
    "abl_paper": "abl:ABL",
}


def defense_class(name: str):
    """The Defense subclass registered under `name` (its module is imported now)."""
    if name not in DEFENSES:
        raise ParamError(f"defense: unknown defense {name!r}; allowed: {', '.join(DEFENSES)}")
    module, cls = DEFENSES[name].split(":")
    return getattr(import_module(f"{__name__}.{module}"), cls)


def defense_module(name: str) -> str:
    """The dotted module path of a registered defense (for the dependency generator)."""
    return f"{__name__}.{DEFENSES[name].split(':')[0]}"


def param_keys(name: str) -> list[str]:
    """The params.yaml keys a defense's stage reads besides the shared model keys, in order."""
    return [f"{name}.{key}" for key in defense_class(name).knobs]
