"""Sweep one attack over a grid of params with `dvc exp run`, and tabulate how every defense held up.

    cd demo && python -m backdoorlab.worker python -m backdoorlab.sweep badnets \\
        --set attack.target=0,3,7 --set attack.badnets_rate=0.01,0.05,0.1

Each point of the grid is one DVC experiment (`dvc exp run -n <name> -S key=value ...`)
that runs only the attack's stages for every seed in params.yaml (its poison, the
no-defense model, the clean model's scores on the attack's data sets, the isolation and
every defense), so the clean model and the other
attacks are not retrained; `dvc exp show` lists them afterwards. The same params serve
every point: nothing is retuned per setting. After each experiment its scores are read
from the workspace; at the end the workspace is put back as it was (its DVC outputs from the
cache, where they were made; the tables are written either way; the sweep refuses
to start unless the folder is committed) and the table is written to
sweeps/<name>.csv (one row per setting, model and seed; `--name`, by default the attack)
and sweeps/<name>.md (per setting, the report's table: mean +- std over seeds, the worst seed's ASR,
isolation precision and recall; the clean model's accuracy on that target class,
from its per-class accuracy, and its ASR on the attack's triggered images, as the yardsticks).
Sweeps of the same grid run apart (one seed each, say, on a machine too small for three at once) make
one table over all their seeds with `--merge sweeps/a.csv sweeps/b.csv --name ab`.
"""
from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from .attacks import ATTACKS
from .defenses import DEFENSES
from .layout import CLEAN, ISOLATION, SCORES
from .params import ParamError
from .report import per_seed_rows, summarize, to_markdown
from .storage import atomic_path, save_text

OUT = Path("sweeps")


def grid(settings: list[str], params: dict) -> list[dict[str, str]]:
    """'key=v1,v2' strings -> every combination as {key: value}; exits 2 on a key params.yaml lacks."""
    axes = {}
    for item in settings:
        key, _, values = item.partition("=")
        node = params
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ParamError(f"--set {key}: no such param in params.yaml (e.g. attack.badnets_rate)")
            node = node[part]
        if not values or isinstance(node, (dict, list)):
            raise ParamError(f"--set {key}: give one or more comma-separated values for a scalar param")
        axes[key] = values.split(",")
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def stages(attack: str, seeds: list[int]) -> list[str]:
    """The attack's no-defense, clean-model and defense stages per seed: DVC runs their poison and isolation
    with them."""
    return [f"{stage}@{attack}-{seed}" for seed in seeds
            for stage in ["train", "score_clean", *(f"defend_{d}" for d in DEFENSES)]]


def name_of(attack: str, setting: dict[str, str]) -> str:
    return "-".join([attack, *(f"{k.split('.')[-1]}{v}" for k, v in setting.items())]).replace("_", "")


def rows_of(attack: str, setting: dict[str, str], seeds: list[int]) -> list[dict]:
    """This experiment's per-seed scores of the attack's models, and the clean model on the target class.
    Only `seeds` (params.yaml's): score files of other seeds left in the folder are not this experiment's."""
    rows = [r for r in per_seed_rows(SCORES, ISOLATION)
            if r.get("attack", CLEAN) in (attack, CLEAN) and r["seed"] in seeds]
    target = next(r["target"] for r in rows if r.get("attack") == attack)
    for r in rows:
        if "attack" not in r:  # the clean model: its accuracy on this target class
            r["target_class_acc"] = r["class_acc"][target]
        r.pop("class_acc", None)
        r.update(setting)
    return rows


def tables(rows: list[dict], keys: list[str]) -> str:
    """Markdown: one results table (the report's columns, mean +- std over seeds) per setting."""
    frame = pd.DataFrame(rows)
    out = []
    for setting, group in frame.groupby(keys, sort=False):
        title = ", ".join(f"{k}={v}" for k, v in zip(keys, setting if isinstance(setting, tuple) else (setting,)))
        records = [{k: v for k, v in r.items() if not pd.isna(v)} for r in group.to_dict("records")]
        out.append(f"### {title}\n\n" + to_markdown(*summarize(records)))
    return "\n".join(out)


def merged(paths: list[str], attack: str) -> tuple[list[dict], list[str]]:
    """The rows of sweeps already run (their CSVs: the same grid, e.g. one file per seed, run on different days
    or machines) as one sweep's, and the swept keys (the columns named like params, 'attack.target').
    A (setting, model, seed) in two files would count twice: refused."""
    frames = []
    for path in paths:
        if not Path(path).is_file():
            raise ParamError(f"--merge {path}: no such file (give the .csv files a sweep wrote under sweeps/)")
        frames.append(pd.read_csv(path))
    frame = pd.concat(frames, ignore_index=True)
    if "model" not in frame or "seed" not in frame:
        raise ParamError("--merge: these are not a sweep's CSV files (no 'model' and 'seed' columns)")
    frame = frame[frame["model"].eq("clean data (reference)") | frame.get("attack", pd.Series(dtype=str)).eq(attack)]
    keys = [column for column in frame.columns if "." in column]
    if frame.empty or not keys:
        raise ParamError(f"--merge: no rows of {attack} with a swept param in {', '.join(paths)}")
    unset = [k for k in keys if frame[k].isna().any()]
    if unset:  # a row with no value of a key would drop out of the table without a word
        raise ParamError(f"--merge: {unset[0]} is swept in some of the files and not in others: "
                         "merge sweeps of the same params")
    twice = frame[frame.duplicated(keys + ["model", "seed"], keep=False)]
    if not twice.empty:
        first = twice.iloc[0]
        raise ParamError(f"--merge: {first['model']!r}, seed {first['seed']}, "
                         + ", ".join(f"{k}={first[k]}" for k in keys) + " is in more than one file")
    rows = [{k: v for k, v in r.items() if not pd.isna(v)} for r in frame.to_dict("records")]
    return rows, keys


def write(name: str, rows: list[dict], keys: list[str]) -> str:
    """sweeps/<name>.csv (one row per setting, model and seed) and sweeps/<name>.md (the tables); returns the tables."""
    OUT.mkdir(exist_ok=True)
    with atomic_path(OUT / f"{name}.csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False, float_format="%.4f")
    table = tables(rows, keys)
    save_text(OUT / f"{name}.md", table)
    return table


def run(cmd: list[str], check: bool = True) -> bool:
    """Echo and run `cmd`; with `check`, a failure raises, else it is returned as False."""
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=check).returncode == 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m backdoorlab.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("attack", help=f"one of {', '.join(ATTACKS)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2",
                        help="a param and its values; repeat for a grid")
    parser.add_argument("--name", help="the tables' file name under sweeps/ (default: the attack)")
    parser.add_argument("--dry-run", action="store_true", help="print the experiments, run nothing")
    parser.add_argument("--merge", nargs="+", metavar="CSV",
                        help="run nothing: write one table (mean +- std over all their seeds) from sweeps already "
                             "run, e.g. one per seed, as sweeps/<--name>.csv and .md")
    args = parser.parse_args(argv)
    if args.attack not in ATTACKS:
        raise ParamError(f"attack {args.attack!r}: choose one of {', '.join(ATTACKS)}")
    name = args.name or args.attack
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ParamError(f"--name {name!r}: letters, digits, '-' and '_' only")
    if args.merge:
        if args.set:
            raise ParamError("--merge runs nothing: leave out --set (the swept keys are read from the files)")
        print(write(name, *merged(args.merge, args.attack)))
        return
    if not Path("params.yaml").exists() or not Path("dvc.yaml").exists():
        raise ParamError("run it in a configuration folder (one holding dvc.yaml and params.yaml)")
    params = yaml.safe_load(Path("params.yaml").read_text())
    if not args.set:
        raise ParamError("--set: give at least one param to sweep, e.g. --set attack.badnets_rate=0.01,0.05")
    points = grid(args.set, params)
    targets = stages(args.attack, list(params["seeds"]))
    if args.dry_run:
        for setting in points:
            print(name_of(args.attack, setting), setting)
        return
    if subprocess.run(["git", "status", "--porcelain", "--", "."], capture_output=True, text=True).stdout.strip():
        raise ParamError("this folder has uncommitted changes: commit them first (the sweep's "
                         "experiments change the workspace, and it is restored to the last commit at the end)")
    rows = []
    try:
        for setting in points:
            sets = [arg for k, v in setting.items() for arg in ("-S", f"{k}={v}")]
            run([sys.executable, "-m", "backdoorlab.dvcrun", "exp", "run", "-n", name_of(args.attack, setting),
                 *sets, *targets])  # dvcrun: DVC, with a cheaper dvc.lock rewrite after each stage
            rows += rows_of(args.attack, setting, list(params["seeds"]))
    finally:
        run(["git", "checkout", "HEAD", "--", "."])
        # Not fatal: in a folder whose committed outputs were never made here, the cache lacks them, and the
        # sweep's tables must still be written.
        restored = run([sys.executable, "-m", "dvc", "checkout", "--force", "--quiet"], check=False)
    print(write(name, rows, list(points[0])))
    if not restored:
        print("warning: some committed outputs are not in this folder's DVC cache and were not put back; "
              "`dvc repro` remakes them", file=sys.stderr)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ParamError as exc:  # one line, exit 2, before anything ran
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
