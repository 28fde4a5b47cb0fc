"""A sweep's table holds the experiment's own seeds only."""
from __future__ import annotations

from backdoorlab import sweep


def test_a_sweep_reads_only_the_seeds_params_yaml_lists(monkeypatch):
    # a folder whose committed run had seeds 0-2, swept with `seeds: [0]`: seeds 1 and 2's score files are still there
    found = [{"model": "badnets, no defense", "attack": "badnets", "seed": s, "target": 3, "asr": 0.1} for s in (0, 1, 2)]
    found += [{"model": "clean data (reference)", "seed": s, "class_acc": [0.5] * 10} for s in (0, 1, 2)]
    monkeypatch.setattr(sweep, "per_seed_rows", lambda *folders: [dict(r) for r in found])
    rows = sweep.rows_of("badnets", {"attack.target": "3"}, seeds=[0])
    assert [(r["model"], r["seed"]) for r in rows] == [("badnets, no defense", 0), ("clean data (reference)", 0)]
    assert rows[1]["target_class_acc"] == 0.5 and rows[0]["attack.target"] == "3"
