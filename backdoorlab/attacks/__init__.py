"""Attacks, found by name. A new attack is one module plus one line in ATTACKS."""
from __future__ import annotations

from ..params import ParamError
from .base import Attack, PoisonedSets
from .badnets import BadNets
from .blend import Blend
from .clean_label import CleanLabel
from .input_aware import InputAware
from .sig import SIG

ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (
    BadNets,
    Blend,
    SIG,
    CleanLabel,
    InputAware,
)}


def attack_class(name: str) -> type[Attack]:
    if name not in ATTACKS:
        raise ParamError(f"attack: unknown attack {name!r}; allowed: {', '.join(ATTACKS)}")
    return ATTACKS[name]


def param_keys(name: str) -> list[str]:
    """The params.yaml keys an attack's poison stage reads, in order."""
    return ["attack.target", "attack.seed"] + [f"attack.{knob}" for knob in attack_class(name).knobs]


__all__ = ["ATTACKS", "Attack", "PoisonedSets", "attack_class", "param_keys"]
