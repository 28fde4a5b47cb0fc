"""Stage `report`: gather every model's scores into the results table and print it.

Rows: the clean model; per attack, the clean model on that attack's data sets (the
ASR with no poison), no defense and one row per defense (registry order). Columns:
train accuracy on the clean and poisoned parts, CA, target-class
accuracy (for the clean model: its accuracy on the attacks' target class), ASR and
the worst seed's ASR, train/test loss, isolation precision/recall. Each cell is the
mean +- std over the training seeds.

Reads   metrics/scores/, metrics/isolation/, metrics/attacker.json, metrics/surrogate.json, logs/abl*/
Writes  metrics/results.md, metrics/results.csv (per seed), metrics/results.json (the table, for
        `dvc metrics diff`), plots/unlearning/<defense>.png (CA and ASR per unlearning epoch, each attack's
        clean-model ASR dashed)
"""
from __future__ import annotations

import pandas as pd

from backdoorlab.defenses import DEFENSES
from backdoorlab.layout import ATTACKER_METRICS, ISOLATION, LOGS, RESULTS, SCORES, SURROGATE_METRICS
from backdoorlab.report import (clean_model_floors, notes, per_seed_rows, results_table, summary_metrics, to_markdown,
                                unlearning_curves)
from backdoorlab.runner import phase, run_stage, stage_parser
from backdoorlab.storage import atomic_path, save_figure, save_json, save_text

PARAMS: list[str] = []


def main(args) -> None:
    mean, std = results_table(SCORES, ISOLATION)
    markdown = to_markdown(mean, std) + notes(SURROGATE_METRICS, ATTACKER_METRICS)
    save_text(RESULTS.with_suffix(".md"), markdown)
    save_json(RESULTS.with_suffix(".json"), summary_metrics(mean, std))
    per_seed = pd.DataFrame(per_seed_rows(SCORES, ISOLATION)).drop(columns=["class_acc"], errors="ignore")
    with atomic_path(RESULTS.with_suffix(".csv")) as tmp:
        per_seed.to_csv(tmp, index=False, float_format="%.4f")
    with phase("pictures"):
        for defense in DEFENSES:
            save_figure(f"plots/unlearning/{defense}.png", unlearning_curves(LOGS, defense, clean_model_floors(mean)))
    print(markdown)


if __name__ == "__main__":
    run_stage(main, stage_parser("report", __doc__))
