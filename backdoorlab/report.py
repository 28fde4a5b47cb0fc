"""The results table, shaped like the seed report's: one row per model, one column per metric."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .attacks import ATTACKS
from .storage import load_json

COLUMNS = {  # metric key -> column title; accuracies are shown in percent
    "train_acc_clean": "train acc clean %",
    "train_acc_poisoned": "train acc poisoned %",
    "test_acc": "CA %",
    "target_class_acc": "target-class acc %",
    "asr": "ASR %",
    "train_loss": "train loss",
    "test_loss": "test loss",
    "isolation_precision": "isolation precision %",
    "isolation_recall": "isolation recall %",
}
PERCENT = {"train_acc_clean", "train_acc_poisoned", "test_acc", "target_class_acc", "asr",
           "isolation_precision", "isolation_recall"}


def results_table(evaluate_dir: Path, isolation_dir: Path) -> pd.DataFrame:
    """Rows: the clean model, then per attack (registry order) no defense and ABL."""
    rows = []
    clean = evaluate_dir / "clean.json"
    if clean.exists():
        rows.append({"model": "clean data (reference)", **load_json(clean)["no_defense"]})
    for attack in ATTACKS:
        path = evaluate_dir / f"{attack}.json"
        if not path.exists():
            continue
        scores = load_json(path)
        rows.append({"model": f"{attack}, no defense", **scores["no_defense"]})
        isolation_path = isolation_dir / f"{attack}.json"
        isolation = load_json(isolation_path) if isolation_path.exists() else {}
        rows.append({"model": f"{attack} + ABL", **scores["abl"],
                     "isolation_precision": isolation.get("precision"), "isolation_recall": isolation.get("recall")})
    table = pd.DataFrame(rows, columns=["model", *COLUMNS]).set_index("model")
    for key in PERCENT:
        table[key] = table[key].astype(float) * 100
    return table.astype(float).rename(columns=COLUMNS)


def to_markdown(table: pd.DataFrame) -> str:
    """Accuracies with one decimal, losses with three, '-' where a metric does not apply."""
    shown = table.copy().astype(object)
    for column in table.columns:
        digits = 3 if "loss" in column else 1
        shown[column] = [("-" if pd.isna(v) else f"{v:.{digits}f}") for v in table[column]]
    return shown.to_markdown(colalign=("left",) + ("right",) * len(shown.columns)) + "\n"
