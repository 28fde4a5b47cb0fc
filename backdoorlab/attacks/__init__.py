"""Attacks, found by name. A new attack is one module here plus one line in ATTACKS.

The registry names modules instead of importing them, so a stage imports only the
attack it runs: editing one attack's module makes only that attack's stages stale.
"""
from __future__ import annotations

from importlib import import_module

from ..params import ParamError

ATTACKS: dict[str, str] = {  # name -> "module:class"; this order is the results table's order
    "badnets": "badnets:BadNets",
    "blend": "blend:Blend",
    "sig": "sig:SIG",
    "clean_label": "clean_label:CleanLabel",
    "input_aware": "input_aware:InputAware",
}


def attack_class(name: str):
    """The Attack subclass registered under `name` (its module is imported now)."""
    if name not in ATTACKS:
        raise ParamError(f"attack: unknown attack {name!r}; allowed: {', '.join(ATTACKS)}")
    module, cls = ATTACKS[name].split(":")
    return getattr(import_module(f"{__name__}.{module}"), cls)


def attack_module(name: str) -> str:
    """The dotted module path of a registered attack (for the dependency generator)."""
    return f"{__name__}.{ATTACKS[name].split(':')[0]}"


def param_keys(name: str) -> list[str]:
    """The params.yaml keys an attack's poison stage reads, in order (the thread count where it computes
    with a model, since that rounds differently per thread count)."""
    cls = attack_class(name)
    return (["attack.target", "attack.seed"] + [f"attack.{knob}" for knob in cls.knobs]
            + (["train.threads"] if cls.inputs else []))
