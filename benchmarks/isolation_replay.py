"""Replay the adaptive isolation's decision on recorded loss histories, for several windows.

    python -m benchmarks.isolation_replay demo --windows 0 1 2 3
    python -m benchmarks.isolation_replay sweep-a sweep-b --windows 0 2 --output replay.md
    python -m benchmarks.isolation_replay demo --windows 3 --drop off on   # the loss-drop signal's effect
    python -m benchmarks.isolation_replay demo --windows 3 --max-epochs 20 --persist 2   # two what-ifs
    python -m benchmarks.isolation_replay demo --windows 3 --ratio 0.005   # a smaller examined share

Every isolate stage saves each example's loss per isolation epoch (`history` in
data/isolated/<attack>/seed<k>.npz). This replays on it, epoch by epoch, the rule of
backdoorlab/defenses/isolation.py (`decide`: the learning speed over the last `window`
epochs, one label holding `isolate.min_concentration` of the fastest `isolate.ratio`, or
with `isolate.drop` of the largest falls in loss since the second epoch), with each
folder's params and only the window and the drop signal changed, and scores every decision against
the true poison indices (data/poisoned/<attack>/train.npz), which the defense never sees.
A decision is a false alarm when it isolates with no poison among the isolated.

The last column checks the premise both signals rest on: the share of poisoned examples
among the fastest `isolate.ratio` and among the largest falls, at the last epoch the
isolation may train (`isolate.max_epochs`), with the last `--windows` value. Where
poison is a minority of both, no threshold on these signals can isolate it cleanly: the
isolation model has not learned it faster than the clean examples.

The adaptive isolation stops once it has found something, so its history is cut there;
to record every epoch, run the isolation with the paper's rule, which never stops early:
`dvc exp run -S isolate.selection=lowest -S isolate.max_epochs=12 -S isolate.finetune_epochs=0`
(or set those in a copy of the configuration). `python -m stages.isolate clean <seed>`
in the folder records the clean training set's history (data/isolated/clean/), the
false-alarm side: no label should ever stand out there.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import yaml

from backdoorlab.defenses.isolation import IsolationConfig, candidates, decide, learning_speed, loss_drop
from backdoorlab.storage import load_arrays, load_json, save_figure, save_text


def config(folder: Path, window: int, drop: bool, min_gap: float | None = None,
           max_epochs: int | None = None, ratio: float | None = None) -> IsolationConfig:
    group = yaml.safe_load((folder / "params.yaml").read_text())["isolate"]
    flat = {f"isolate.{k}": v for k, v in group.items()}
    flat.setdefault("isolate.window", 0)
    flat.setdefault("isolate.drop", False)
    flat.setdefault("isolate.min_gap", 0.0)
    if min_gap is not None:
        flat["isolate.min_gap"] = min_gap
    if max_epochs is not None:
        flat["isolate.max_epochs"] = max_epochs
    if ratio is not None:
        flat["isolate.ratio"] = ratio
    return dataclasses.replace(IsolationConfig.from_params(flat), selection="adaptive", window=window, drop=drop)


def runs(folder: Path):
    """(attack, seed, history, labels, poisoned mask, target) for every recorded isolation in the folder."""
    for path in sorted((folder / "data/isolated").glob("*/seed*.npz")):
        arrays = load_arrays(path)
        if "history" not in arrays:
            continue
        attack, seed = path.parent.name, int(path.stem.removeprefix("seed"))
        if attack == "clean":
            labels, poison, target = load_arrays(folder / "data/dataset.npz")["y_train"], np.zeros(0, int), None
        else:
            train = load_arrays(folder / "data/poisoned" / attack / "train.npz")
            labels, poison = train["y"], train["poison_indices"]
            target = load_json(folder / "data/poisoned" / attack / "meta.json")["target"]  # as poisoned
        mask = np.zeros(len(labels), dtype=bool)
        mask[poison] = True
        yield attack, seed, list(arrays["history"]), labels, mask, target


def replay(history: list[np.ndarray], labels: np.ndarray, poisoned: np.ndarray, cfg: IsolationConfig,
           persist: int = 1) -> dict:
    """The rule's decision as the isolation would have taken it, how it scores, and the concentration per epoch
    had it gone on. With `persist` > 1, a what-if the isolation does not implement: a decision counts only once
    the rule has named the same label in `persist` consecutive epochs (a backdoor, once learned, stays learned;
    a clean class's dip under LGA is often one epoch long)."""
    result, curve, streak, named = None, [], 0, None
    history = history[:cfg.max_epochs]
    for epoch in range(1, len(history) + 1):
        decision = decide(history[:epoch], labels, cfg)
        cand, found = decision.candidates, decision.found
        curve.append(max(decision.shares.values()))
        streak = streak + 1 if found and cand.label == named else int(found)
        named = cand.label if found else None
        if found and streak >= persist and result is None:
            chosen = cand.indices[labels[cand.indices] == cand.label]
            result = {"found": True, "epoch": epoch, "signal": cand.signal, "label": cand.label,
                      "isolated": len(chosen), "precision": float(poisoned[chosen].mean())}
    return {**(result or {"found": False, "epoch": len(history), "highest": max(curve[1:], default=0.0)}),
            "curve": curve}


def premise(history: list[np.ndarray], labels: np.ndarray, poisoned: np.ndarray, cfg: IsolationConfig) -> str:
    """The poison's share of the rule's suspects by each signal (the fastest, the largest falls) after
    `cfg.max_epochs` epochs (or every recorded one)."""
    if not poisoned.any():
        return "-"
    seen = history[:cfg.max_epochs]
    fastest = candidates(learning_speed(seen, cfg.window), labels, cfg.ratio).indices
    fell = candidates(-loss_drop(seen, cfg.window), labels, cfg.ratio).indices
    return f"{100 * poisoned[fastest].mean():.0f}% / {100 * poisoned[fell].mean():.0f}% (epoch {len(seen)})"


def plot(curves: dict[str, list[tuple[str, list[float], bool]]], threshold: float):
    """One panel per variant: the suspect label's share of the suspects per epoch (the higher of the two
    signals with the drop), one line per run."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.6), sharey=True, squeeze=False)
    for ax, (variant, lines) in zip(axes[0], curves.items()):
        for name, curve, poisoned in lines:
            ax.plot(range(1, len(curve) + 1), curve, color="tab:red" if poisoned else "tab:blue",
                    alpha=0.5 if poisoned else 0.9, lw=1.0 if poisoned else 1.6, ls="-" if poisoned else "--")
        ax.axhline(threshold, color="black", lw=0.8)
        ax.set_title(variant.replace("window 0", "window 0 (every epoch)"))
        ax.set_xlabel("isolation epoch")
    axes[0][0].set_ylabel("one label's share of the suspects")
    axes[0][0].plot([], [], color="tab:red", label="poisoned training set")
    axes[0][0].plot([], [], color="tab:blue", ls="--", label="clean training set")
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def cell(result: dict, target: int | None) -> str:
    if not result["found"]:
        return f"nothing (at most {result['highest']:.2f})"
    wrong = "" if result["label"] == target else " (not the target)"
    by = " by drop" if result["signal"] == "drop" else ""
    return (f"epoch {result['epoch']}{by}: {result['isolated']} of label {result['label']}{wrong}, "
            f"precision {100 * result['precision']:.0f}%")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.isolation_replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="configuration folders whose isolate stages ran")
    parser.add_argument("--windows", nargs="+", type=int, default=[0, 2], help="learning-speed windows to replay")
    parser.add_argument("--drop", nargs="+", choices=["off", "on"], default=["on"],
                        help="replay without and/or with the loss-drop signal (default: on)")
    parser.add_argument("--min-gap", type=float, metavar="DECADES",
                        help="isolate.min_gap for every folder (default: each folder's own, 0 where it has none)")
    parser.add_argument("--max-epochs", type=int, metavar="N",
                        help="isolate.max_epochs for every folder: decide on the first N recorded epochs only "
                             "(default: each folder's own)")
    parser.add_argument("--ratio", type=float, metavar="SHARE",
                        help="isolate.ratio for every folder: the share of the training set examined "
                             "(default: each folder's own)")
    parser.add_argument("--persist", type=int, default=1, metavar="N",
                        help="what-if: count a decision only once the same label was named in N consecutive "
                             "epochs (default 1: the isolation's own rule)")
    parser.add_argument("--output", type=Path, help="also write the table (markdown) here")
    parser.add_argument("--plot", type=Path, help="also draw the concentration curves (png) here")
    args = parser.parse_args(argv)
    if args.max_epochs is not None and args.max_epochs < 1:
        parser.exit(2, "--max-epochs: an integer >= 1\n")
    if args.ratio is not None and not 0 < args.ratio < 1:
        parser.exit(2, "--ratio: a share in (0, 1)\n")
    if args.persist < 1:
        parser.exit(2, "--persist: an integer >= 1\n")
    if any(w < 0 for w in args.windows):
        parser.exit(2, "--windows: integers >= 0 (0: every epoch from the second)\n")
    variants = {f"window {w}" + ("" if d == "off" else " + drop"): (w, d == "on")
                for w in args.windows for d in args.drop}
    lines = ["| run | poisoned | " + " | ".join(variants) + " | poison among the fastest / largest falls |",
             "|---|---:|" + "---|" * len(variants) + "---|"]
    tally = {v: {"found": 0, "false alarms": 0, "runs": 0} for v in variants}
    curves: dict[str, list] = {v: [] for v in variants}
    threshold = 0.0
    for folder in args.folders:
        if not (folder / "params.yaml").is_file():
            parser.exit(2, f"{folder}: no params.yaml\n")
        for attack, seed, history, labels, poisoned, target in runs(folder):
            cells = []
            for v, (w, drop) in variants.items():
                cfg = config(folder, w, drop, args.min_gap, args.max_epochs, args.ratio)
                threshold = cfg.min_concentration
                result = replay(history, labels, poisoned, cfg, args.persist)
                curves[v].append((f"{folder.name} {attack} {seed}", result["curve"], bool(poisoned.any())))
                tally[v]["runs"] += 1
                tally[v]["found"] += result["found"] and result["precision"] > 0
                tally[v]["false alarms"] += result["found"] and result["precision"] == 0
                cells.append(cell(result, target))
            cells.append(premise(history, labels, poisoned, cfg))  # with the last variant's window
            name = f"{folder.name} {attack} seed {seed}" + (f" (target {target})" if target is not None else "")
            lines.append(f"| {name} | {int(poisoned.sum())} | " + " | ".join(cells) + " |")
    lines += [""] + [f"{v}: {t['found']} of {t['runs']} runs isolated poison, {t['false alarms']} "
                     f"isolated only clean examples" for v, t in tally.items()]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.output:
        save_text(args.output, text)
    if args.plot:
        save_figure(args.plot, plot(curves, threshold))
    return 0


if __name__ == "__main__":
    sys.exit(main())
