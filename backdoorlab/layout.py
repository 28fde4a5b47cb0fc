"""Where every artifact lives: the one place that names paths.

All paths are relative to the folder holding dvc.yaml, where DVC runs every stage;
dvc.yaml declares the same layout. Models, scores and curves are kept per training
seed (`seed<k>` folders), so a list of seeds expands into independent DVC stages.
"""
from __future__ import annotations

from pathlib import Path

CLEAN = "clean"  # the reference model's name: trained on the clean training set
NO_DEFENSE = "no_defense"  # the kind of model trained on a data set as it is
CLEAN_MODEL = "clean_model"  # the clean reference model, scored on an attack's data sets

DATASET = Path("data/dataset.npz")
SURROGATE = Path("models/surrogate.pt")
ATTACKER = Path("models/attacker.pt")
SURROGATE_METRICS = Path("metrics/surrogate.json")
ATTACKER_METRICS = Path("metrics/attacker.json")
SCORES = Path("metrics/scores")
ISOLATION = Path("metrics/isolation")
RESULTS = Path("metrics/results")  # .md, .csv, .json written by the report
GALLERY = Path("plots/gallery")
LOGS = Path("logs")


def poisoned_dir(attack: str) -> Path:
    """data/poisoned/<attack>/ holding train.npz, test.npz and meta.json."""
    return Path("data/poisoned") / attack


def seed_dir(seed: int) -> str:
    return f"seed{seed}"


def model_file(name: str, seed: int, kind: str = NO_DEFENSE) -> Path:
    """models/<clean or attack>/seed<k>/<no_defense, isolation, finetuned or a defense>.pt"""
    return Path("models") / name / seed_dir(seed) / f"{kind}.pt"


def scores_file(name: str, seed: int, kind: str = NO_DEFENSE) -> Path:
    """metrics/scores/<clean or attack>/seed<k>/<no_defense, clean_model or a defense>.json: a row of the table."""
    return SCORES / name / seed_dir(seed) / f"{kind}.json"


def isolated_file(attack: str, seed: int) -> Path:
    """data/isolated/<attack>/seed<k>.npz: the isolated indices and every example's loss."""
    return Path("data/isolated") / attack / f"{seed_dir(seed)}.npz"


def isolation_metrics(attack: str, seed: int) -> Path:
    return ISOLATION / attack / f"{seed_dir(seed)}.json"


def isolation_plot(attack: str, seed: int) -> Path:
    return Path("plots/isolation") / attack / f"{seed_dir(seed)}.png"


def log_dir(phase: str, name: str, seed: int | None = None) -> Path:
    """logs/<phase>/<name>[/seed<k>]: a dvclive folder of per-epoch curves."""
    folder = LOGS / phase / name
    return folder if seed is None else folder / seed_dir(seed)


def gallery_file(attack: str, figure: str = "") -> Path:
    return GALLERY / (f"{attack}_{figure}.png" if figure else f"{attack}.png")
