"""Per-epoch curves, written with dvclive: `dvc plots show` draws them, `dvc exp show` lists the last values.

Each curve folder holds plots/metrics/<metric>.tsv (columns `step` and the metric) and
metrics.json (the last epoch). dvclive is told not to touch dvc.yaml nor to make
experiments of its own: the pipeline declares these folders itself.
"""
from __future__ import annotations

import math
from pathlib import Path


class Curves:
    def __init__(self, folder: str | Path):
        from dvclive import Live

        self.live = Live(dir=str(folder), resume=False, report=None, save_dvc_exp=False, dvcyaml=None)

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
