"""Stage `report`: gather every evaluation into the results table and print it.

Rows: the clean model; per attack, no defense and ABL. Columns: train accuracy on
the clean and poisoned parts, CA, target-class accuracy, ASR, train/test loss,
isolation precision/recall (ABL rows).

Reads   metrics/evaluate/*.json, metrics/isolation/*.json, metrics/attacker.json, metrics/surrogate.json,
        logs/unlearn/*/
Writes  metrics/results.md, metrics/results.csv, plots/unlearning.png (CA and ASR per unlearning epoch)
"""
from __future__ import annotations

from backdoorlab.pipeline import LOGS, METRICS, PLOTS, run_stage, stage_parser
from backdoorlab.report import notes, results_table, to_markdown, unlearning_curves
from backdoorlab.storage import atomic_path, save_figure, save_text

PARAMS: list[str] = []


def main(args) -> None:
    table = results_table(METRICS / "evaluate", METRICS / "isolation", METRICS / "attacker.json")
    markdown = to_markdown(table) + notes(METRICS)
    save_text(METRICS / "results.md", markdown)
    with atomic_path(METRICS / "results.csv") as tmp:
        table.to_csv(tmp, float_format="%.4f")
    save_figure(PLOTS / "unlearning.png", unlearning_curves(LOGS / "unlearn"))
    print(markdown)


if __name__ == "__main__":
    run_stage(main, stage_parser("report", __doc__))
