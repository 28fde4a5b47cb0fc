"""A sweep's table holds the experiment's own seeds only; sweeps run apart merge into one table over their seeds."""
from __future__ import annotations

import pandas as pd
import pytest

from backdoorlab import sweep
from backdoorlab.params import ParamError


def test_a_sweep_reads_only_the_seeds_params_yaml_lists(monkeypatch):
    # a folder whose committed run had seeds 0-2, swept with `seeds: [0]`: seeds 1 and 2's score files are still there
    found = [{"model": "badnets, no defense", "attack": "badnets", "seed": s, "target": 3, "asr": 0.1} for s in (0, 1, 2)]
    found += [{"model": "clean data (reference)", "seed": s, "class_acc": [0.5] * 10} for s in (0, 1, 2)]
    monkeypatch.setattr(sweep, "per_seed_rows", lambda *folders: [dict(r) for r in found])
    rows = sweep.rows_of("badnets", {"attack.target": "3"}, seeds=[0])
    assert [(r["model"], r["seed"]) for r in rows] == [("badnets, no defense", 0), ("clean data (reference)", 0)]
    assert rows[1]["target_class_acc"] == 0.5 and rows[0]["attack.target"] == "3"


def _sweep_csv(path, seed, asr_by_target):
    rows = []
    for target, asr in asr_by_target.items():
        rows.append({"model": "clean data (reference)", "seed": seed, "test_acc": 0.8, "target_class_acc": 0.7,
                     "attack.target": target})
        rows.append({"model": "badnets + abl", "seed": seed, "attack": "badnets", "target": target, "asr": asr,
                     "test_acc": 0.78, "attack.target": target})
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def test_sweeps_run_one_seed_at_a_time_merge_into_one_table_over_their_seeds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = [_sweep_csv(tmp_path / f"seed{s}.csv", s, {3: asr3, 7: asr7})
             for s, asr3, asr7 in [(0, 0.005, 0.02), (1, 0.003, 0.087), (2, 0.01, 0.04)]]
    sweep.main(["badnets", "--merge", *files, "--name", "three-seeds"])
    table = (tmp_path / "sweeps" / "three-seeds.md").read_text()
    target7 = table.split("### attack.target=7")[1]
    abl = next(line for line in target7.splitlines() if line.startswith("| badnets + abl"))
    cells = [cell.strip() for cell in abl.strip("|").split("|")]
    assert cells[5] == "4.9 ± 3.4"  # ASR %: mean ± std of 2.0, 8.7 and 4.0
    assert cells[6] == "8.7"  # the worst seed's
    assert cells[-1] == "3"
    assert len(pd.read_csv(tmp_path / "sweeps" / "three-seeds.csv")) == 12


def test_merging_the_same_seed_twice_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one = _sweep_csv(tmp_path / "a.csv", 0, {3: 0.005})
    again = _sweep_csv(tmp_path / "b.csv", 0, {3: 0.004})
    with pytest.raises(ParamError, match="seed 0, attack.target=3 is in more than one file"):
        sweep.main(["badnets", "--merge", one, again, "--name", "twice"])
    assert not (tmp_path / "sweeps").exists()


def test_merge_refuses_a_missing_file_and_a_swept_key(tmp_path):
    with pytest.raises(ParamError, match="no such file"):
        sweep.main(["badnets", "--merge", str(tmp_path / "nope.csv")])
    one = _sweep_csv(tmp_path / "a.csv", 0, {3: 0.005})
    with pytest.raises(ParamError, match="leave out --set"):
        sweep.main(["badnets", "--merge", one, "--set", "attack.target=3"])


def test_merging_sweeps_of_different_params_is_refused_rather_than_dropping_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one = _sweep_csv(tmp_path / "a.csv", 0, {3: 0.005})
    other = tmp_path / "b.csv"
    pd.read_csv(one).assign(seed=1).rename(columns={"attack.target": "attack.badnets_rate"}).to_csv(other, index=False)
    with pytest.raises(ParamError, match="swept in some of the files and not in others"):
        sweep.main(["badnets", "--merge", one, str(other), "--name", "mixed"])
    assert not (tmp_path / "sweeps").exists()
