"""The results table: one row per model, one column per metric, mean +- std over the training seeds.

Rows: the clean reference model; then per attack (registry order) the clean model
scored on that attack's data sets (the ASR a model reaches with no poison at all, the
floor a defense is read against), the model with no defense and one row per defense
(registry order). Cells hold the mean over seeds and,
with several seeds, the standard deviation; `worst-seed ASR` is the highest ASR any
seed reached. Isolation precision/recall appear on the rows of defenses that isolate
(their summary counts `isolated` examples).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .attacks import ATTACKS
from .defenses import DEFENSES
from .layout import CLEAN, CLEAN_MODEL, NO_DEFENSE
from .storage import load_json

COLUMNS = {  # metric key -> column title; accuracies are shown in percent
    "train_acc_clean": "train acc clean %",
    "train_acc_poisoned": "train acc poisoned %",
    "test_acc": "CA %",
    "target_class_acc": "target-class acc %",
    "asr": "ASR %",
    "worst_asr": "worst-seed ASR %",
    "train_loss": "train loss",
    "test_loss": "test loss",
    "isolation_precision": "isolation precision %",
    "isolation_recall": "isolation recall %",
}
KIND_LABELS = {CLEAN_MODEL: "{}, clean model", NO_DEFENSE: "{}, no defense"}  # defenses: "<attack> + <defense>"
PERCENT = {"train_acc_clean", "train_acc_poisoned", "test_acc", "target_class_acc", "asr", "worst_asr",
           "isolation_precision", "isolation_recall"}


def seed_files(folder: Path, name: str) -> dict[int, Path]:
    """{seed: file} for <folder>/<name>/seed<k>.json or <folder>/.../seed<k>/<name>.json layouts."""
    found = {}
    for path in folder.glob("seed*"):
        candidate = path / f"{name}.json" if path.is_dir() else path
        if candidate.name.endswith(".json") and candidate.exists() and path.name[4:].split(".")[0].isdigit():
            found[int(path.name[4:].split(".")[0])] = candidate
    return dict(sorted(found.items()))


def _rows_of(scores_dir: Path, isolation_dir: Path, name: str, kind: str) -> list[dict]:
    rows = []
    for seed, path in seed_files(scores_dir / name, kind).items():
        scores = load_json(path)
        row = {"seed": seed, **{k: v for k, v in scores.items() if k in COLUMNS or k in ("class_acc", "target")}}
        isolation = isolation_dir / name / f"seed{seed}.json"
        if "isolated" in (scores.get("defense") or {}) and isolation.exists():
            found = load_json(isolation)
            row["isolation_precision"], row["isolation_recall"] = found.get("precision"), found.get("recall")
        rows.append(row)
    return rows


def per_seed_rows(scores_dir: Path, isolation_dir: Path) -> list[dict]:
    """Every model's scores, one dict per (row, seed), in table order."""
    out = []
    for seed_row in _rows_of(scores_dir, isolation_dir, CLEAN, NO_DEFENSE):
        out.append({"model": "clean data (reference)", **seed_row})
    for attack in ATTACKS:
        for kind in [CLEAN_MODEL, NO_DEFENSE, *DEFENSES]:
            label = KIND_LABELS[kind].format(attack) if kind in KIND_LABELS else f"{attack} + {kind}"
            out += [{"model": label, "attack": attack, **r} for r in _rows_of(scores_dir, isolation_dir, attack, kind)]
    return out


def results_table(scores_dir: Path, isolation_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(mean, std) tables over seeds, rows in table order, columns COLUMNS (accuracies in percent)."""
    return summarize(per_seed_rows(scores_dir, isolation_dir))


def summarize(rows: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """results_table for rows as per_seed_rows gives them."""
    targets = {r["target"] for r in rows if r.get("target") is not None} if rows else set()
    frame = pd.DataFrame(rows)
    if frame.empty:
        empty = pd.DataFrame(columns=list(COLUMNS))
        return empty, empty
    if len(targets) == 1 and "class_acc" in frame:  # the clean model's accuracy on the attacks' target class
        target = targets.pop()
        clean = frame["model"] == "clean data (reference)"
        frame.loc[clean, "target_class_acc"] = [accs[target] for accs in frame.loc[clean, "class_acc"]]
    frame["worst_asr"] = frame.get("asr")
    for key in COLUMNS:
        if key not in frame:
            frame[key] = np.nan
        frame[key] = pd.to_numeric(frame[key], errors="coerce") * (100 if key in PERCENT else 1)
    order = list(dict.fromkeys(frame["model"]))
    grouped = frame.groupby("model", sort=False)[list(COLUMNS)]
    mean = grouped.mean().reindex(order)
    std = grouped.std(ddof=1).reindex(order)
    mean["worst_asr"] = frame.groupby("model", sort=False)["worst_asr"].max().reindex(order)
    std["worst_asr"] = np.nan
    mean["seeds"] = frame.groupby("model", sort=False)["seed"].count().reindex(order)
    return mean, std


def to_markdown(mean: pd.DataFrame, std: pd.DataFrame) -> str:
    """'mean ± std' cells (std with two or more seeds), one decimal for accuracies, three for losses."""
    shown = pd.DataFrame(index=mean.index)
    for key, title in COLUMNS.items():
        digits = 3 if "loss" in key else 1
        cells = []
        for m, s in zip(mean[key], std[key]):
            if pd.isna(m):
                cells.append("-")
            elif pd.isna(s):
                cells.append(f"{m:.{digits}f}")
            else:
                cells.append(f"{m:.{digits}f} ± {s:.{digits}f}")
        shown[title] = cells
    shown["seeds"] = [str(int(n)) for n in mean["seeds"]]
    return shown.to_markdown(colalign=("left",) + ("right",) * len(shown.columns), disable_numparse=True) + "\n"


def summary_metrics(mean: pd.DataFrame, std: pd.DataFrame) -> dict:
    """The table as nested JSON ({row: {metric: value}}) for `dvc metrics diff`."""
    out = {}
    for model in mean.index:
        cells = {}
        for key in COLUMNS:
            if not pd.isna(mean.loc[model, key]):
                cells[key] = round(float(mean.loc[model, key]), 4)
                if not pd.isna(std.loc[model, key]):
                    cells[f"{key}_std"] = round(float(std.loc[model, key]), 4)
        out[model] = cells
    return out


def notes(surrogate_file: Path, attacker_file: Path) -> str:
    """Facts about the attacks' own models that belong under the table."""
    lines = []
    if surrogate_file.exists():
        s = load_json(surrogate_file)
        kind = "adversarially trained" if s["adversarial"] else "standard"
        lines.append(f"- clean_label surrogate ({kind}): clean test accuracy {100 * s['test_acc']:.1f}%, "
                     f"under PGD l_inf eps {s['pgd_eps']:g}/255: {100 * s['pgd_test_acc']:.1f}%.")
    if attacker_file.exists():
        a = load_json(attacker_file)
        lines.append(f"- input_aware attacker's own model (trained jointly with the trigger generator): clean "
                     f"{100 * a['clean_acc']:.1f}%, attack {100 * a['attack_asr']:.1f}%, cross-trigger "
                     f"{100 * a['cross_trigger_acc']:.1f}%; the input_aware rows come from training on its "
                     "poisoned data set.")
    return ("\n" + "\n".join(lines) + "\n") if lines else ""


def clean_model_floors(mean: pd.DataFrame) -> dict[str, float]:
    """Each attack's clean-model ASR (mean over seeds, %) from results_table's means."""
    labels = {KIND_LABELS[CLEAN_MODEL].format(attack): attack for attack in ATTACKS}
    return {labels[row]: float(mean.loc[row, "asr"]) for row in mean.index
            if row in labels and not pd.isna(mean.loc[row, "asr"])}


def read_curve(folder: Path, metric: str) -> pd.DataFrame | None:
    """A dvclive curve: columns `step` and the metric."""
    path = folder / "plots" / "metrics" / f"{metric}.tsv"
    return pd.read_csv(path, sep="\t") if path.exists() else None


def unlearning_curves(logs_dir: Path, defense: str, floors: dict[str, float] | None = None):
    """CA and ASR after each unlearning epoch (0: before), one colour per attack, one line per seed; `floors`
    (attack -> the clean model's mean ASR, in %) draws each attack's floor as a dashed line."""
    from .gallery import plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, attack in enumerate(ATTACKS):
        for j, folder in enumerate(sorted((logs_dir / defense / attack).glob("seed*"))):
            for ax, metric in zip(axes, ("test_acc", "asr")):
                curve = read_curve(folder, metric)
                if curve is not None:
                    ax.plot(curve["step"], 100 * curve[metric], marker=".", color=colours[i % len(colours)],
                            alpha=0.8, label=attack if j == 0 else None)
        if floors and attack in floors:
            axes[1].axhline(floors[attack], color=colours[i % len(colours)], linestyle="--", linewidth=0.8,
                            alpha=0.8)
    titles = ("clean accuracy (CA) %", "attack success rate (ASR) %" + (", dashed: clean model" if floors else ""))
    for ax, title in zip(axes, titles):
        ax.set_title(f"{defense}: {title}", fontsize=9)
        ax.set_xlabel("unlearning epoch (0: before unlearning)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig
