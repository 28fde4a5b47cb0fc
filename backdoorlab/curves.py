"""Per-epoch curves, written with dvclive: `dvc plots show` draws them, `dvc exp show` lists the last values.

Each curve folder holds plots/metrics/<metric>.tsv (columns `step` and the metric) and
metrics.json (the last epoch). dvclive's own DVC integration is switched off: the
pipeline declares these folders itself, the stages must not make experiments or edit
dvc.yaml, and that integration fails in a git repository with no commit yet.
"""
from __future__ import annotations

import math
from pathlib import Path


def _live(folder: str | Path):
    from dvclive import Live

    class FilesOnly(Live):
        def _init_dvc(self) -> None:  # no experiment, no dvc.yaml, no git: files only
            pass

    return FilesOnly(dir=str(folder), resume=False, report=None, save_dvc_exp=False, dvcyaml=None)


class Curves:
    def __init__(self, folder: str | Path):
        self.live = _live(folder)

    def log(self, stats: dict[str, float]) -> None:
        """One epoch's values; NaN (a metric that does not apply) is left out."""
        for key, value in stats.items():
            if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
                self.live.log_metric(key, float(value), plot=True)
        self.live.next_step()

    def close(self) -> None:
        self.live.end()

    def __enter__(self) -> "Curves":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
