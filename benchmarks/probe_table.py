"""What the research probes scored against the true poison share: one markdown table over attacks x seeds.

A probe gives the rows of one (attack, seed) run; each run's rows go to stderr as they come, and the
whole table to stdout and, with --output, to a file, only once every run has been read (a bad name or a
missing stage output stops it before anything is written).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch

from backdoorlab.artifacts import check_model_name
from backdoorlab.params import ParamError
from backdoorlab.runtime import cpu_model
from backdoorlab.storage import save_text


def runs_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The probe's parser with the arguments every table probe takes: attacks, --seeds, --output."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("attacks", nargs="+", help="attacks whose isolate stages have run in this folder")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--output", type=Path, help="also write the table (markdown) here")
    return parser


def write_table(args: argparse.Namespace, settings: str, header: list[str],
                rows_for: Callable[[str, int], list[str]]) -> None:
    """The table of `rows_for(attack, seed)` for every attack and seed in `args`, under a line naming the CPU,
    torch and the probe's `settings`."""
    for attack in args.attacks:
        check_model_name(attack)
    lines = [f"CPU: {cpu_model()}, torch {torch.__version__}{', ' + settings if settings else ''}", ""] + header
    for attack in args.attacks:
        for seed in args.seeds:
            rows = rows_for(attack, seed)
            lines += rows
            print("\n".join(rows), file=sys.stderr, flush=True)
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.output:
        save_text(args.output, text)


def table_probe_main(prog: str, doc: str, header: list[str], rows_for: Callable[[str, int], list[str]],
                     argv: list[str] | None = None) -> int:
    """The whole main() of a probe that takes only the common arguments: its table, or one line and exit 2."""
    parser = runs_parser(prog, doc)
    args = parser.parse_args(argv)
    try:
        write_table(args, "", header, rows_for)
    except (ParamError, FileNotFoundError) as exc:
        parser.exit(2, f"{exc}\n")
    return 0
