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


def results_table(evaluate_dir: Path, isolation_dir: Path, attacker_file: Path | None = None) -> pd.DataFrame:
    """Rows: the clean model, then per attack (registry order) no defense and ABL.

    For the input-aware attack a first row gives the attacker's own jointly trained
    model; the other rows of every attack come from training on its poisoned data set.
    """
    rows = []
    clean = evaluate_dir / "clean.json"
    if clean.exists():
        rows.append({"model": "clean data (reference)", **load_json(clean)["no_defense"]})
    for attack in ATTACKS:
        path = evaluate_dir / f"{attack}.json"
        if not path.exists():
            continue
        scores = load_json(path)
        if attack == "input_aware" and attacker_file is not None and attacker_file.exists():
            own = load_json(attacker_file)
            rows.append({"model": "input_aware, attacker's own model", "test_acc": own["clean_acc"],
                         "asr": own["attack_asr"]})
        rows.append({"model": f"{attack}, no defense", **scores["no_defense"]})
        isolation_path = isolation_dir / f"{attack}.json"
        isolation = load_json(isolation_path) if isolation_path.exists() else {}
        rows.append({"model": f"{attack} + ABL", **scores["abl"],
                     "isolation_precision": isolation.get("precision"), "isolation_recall": isolation.get("recall")})
    table = pd.DataFrame(rows, columns=["model", *COLUMNS]).set_index("model")
    for key in PERCENT:
        table[key] = table[key].astype(float) * 100
    return table.astype(float).rename(columns=COLUMNS)


def notes(metrics_dir: Path) -> str:
    """Facts about the attacks' own models that belong under the table."""
    lines = []
    attacker, surrogate = metrics_dir / "attacker.json", metrics_dir / "surrogate.json"
    if surrogate.exists():
        s = load_json(surrogate)
        kind = "adversarially trained" if s["adversarial"] else "standard"
        lines.append(f"- clean_label surrogate ({kind}): clean test accuracy {100 * s['test_acc']:.1f}%, "
                     f"under PGD l_inf eps {s['pgd_eps']:g}/255: {100 * s['pgd_test_acc']:.1f}%.")
    if attacker.exists():
        a = load_json(attacker)
        lines.append(f"- input_aware attacker's own model (trained jointly with the trigger generator): clean "
                     f"{100 * a['clean_acc']:.1f}%, attack {100 * a['attack_asr']:.1f}%, cross-trigger "
                     f"{100 * a['cross_trigger_acc']:.1f}%; the rows below it come from training on its "
                     "poisoned data set.")
    return ("\n" + "\n".join(lines) + "\n") if lines else ""


def unlearning_curves(logs_dir: Path):
    """CA and ASR after each unlearning epoch (0: before any ascent), one line per attack."""
    from .gallery import plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharex=True)
    for attack in ATTACKS:
        folder = logs_dir / attack
        if not (folder / "asr.tsv").exists():
            continue
        for ax, metric in zip(axes, ("test_acc", "asr")):
            curve = pd.read_csv(folder / f"{metric}.tsv", sep="\t")
            ax.plot(curve["epoch"], 100 * curve[metric], marker=".", label=attack)
    for ax, title in zip(axes, ("clean accuracy (CA) %", "attack success rate (ASR) %")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("unlearning epoch (0: after fine-tuning)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def to_markdown(table: pd.DataFrame) -> str:
    """Accuracies with one decimal, losses with three, '-' where a metric does not apply."""
    shown = table.copy().astype(object)
    for column in table.columns:
        digits = 3 if "loss" in column else 1
        shown[column] = [("-" if pd.isna(v) else f"{v:.{digits}f}") for v in table[column]]
    return shown.to_markdown(colalign=("left",) + ("right",) * len(shown.columns), disable_numparse=True) + "\n"
