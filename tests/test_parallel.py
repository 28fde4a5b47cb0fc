"""`python -m backdoorlab.parallel`: the stages dvc.yaml defines, run side by side in an order DVC accepts."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from backdoorlab.parallel import main, stages

ROOT = Path(__file__).resolve().parent.parent


def test_the_expanded_stages_are_those_dvc_ran_for_the_demo_with_the_same_commands():
    lock = yaml.safe_load((ROOT / "demo" / "dvc.lock").read_text())["stages"]
    graph = stages(ROOT / "demo")
    assert {name: stage.cmd for name, stage in graph.items()} == {name: s["cmd"] for name, s in lock.items()}


def test_a_stage_waits_for_every_stage_writing_what_it_reads_and_nothing_else():
    graph = stages(ROOT / "demo")
    assert graph["defend_abl@badnets-1"].after == {"data", "poison_badnets", "isolate@badnets-1", "train@badnets-1"}
    assert graph["poison_clean_label"].after == {"data", "surrogate"}
    assert graph["score_clean@sig-1"].after == {"data", "poison_sig", "train_clean@1"}
    assert graph["report"].after == {n for n in graph if n.split("@")[0] in (  # the stages writing metrics and logs
        "train_clean", "train", "score_clean", "isolate", "defend_abl", "defend_abl_paper", "surrogate", "attacker")}
    assert graph["data"].after == set()


def test_seed_zero_and_the_longest_chains_are_first_in_line():
    graph = stages(ROOT / "demo")
    assert graph["surrogate"].chain > graph["poison_clean_label"].chain > graph["train@clean_label-0"].chain
    assert graph["train@badnets-2"].seed == 2 and graph["data"].seed == -1


def write(folder: Path, fail: bool = False) -> None:
    folder.mkdir()
    (folder / "params.yaml").write_text("seeds: [0, 1]\n")
    step = "raise SystemExit(3)" if fail else "import sys; open(sys.argv[1] + '.txt', 'w').write('x')"
    (folder / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "first": {"cmd": "python -c \"open('first.txt', 'w').write('x')\"", "outs": ["first.txt"]},
        "second": {"matrix": {"seed": "${seeds}"}, "cmd": f"python -c \"{step}\" second${{item.seed}}",
                   "deps": ["first.txt"], "outs": ["second${item.seed}.txt"]},
        "last": {"cmd": "python -c \"open('last.txt', 'w').write('x')\"",
                 "deps": ["second0.txt", "second1.txt"], "outs": ["last.txt"]}}}))


def test_it_runs_every_stage_after_those_it_waits_for(tmp_path):
    write(tmp_path / "cfg")
    assert main([str(tmp_path / "cfg"), "--jobs", "2"]) == 0
    assert all((tmp_path / "cfg" / f"{n}.txt").exists() for n in ("first", "second0", "second1", "last"))
    timeline_file = tmp_path / "cfg" / "run-logs" / "timeline.json"
    timeline = {s["stage"]: s for s in json.loads(timeline_file.read_text())["stages"]}
    assert timeline["second@0"]["start_s"] >= timeline["first"]["end_s"]
    assert timeline["last"]["start_s"] >= max(timeline["second@0"]["end_s"], timeline["second@1"]["end_s"])


def test_a_failed_stage_stops_what_waits_on_it_and_the_exit_code_says_so(tmp_path):
    write(tmp_path / "cfg", fail=True)
    assert main([str(tmp_path / "cfg")]) == 1
    assert (tmp_path / "cfg" / "first.txt").exists() and not (tmp_path / "cfg" / "last.txt").exists()
    timeline = json.loads((tmp_path / "cfg" / "run-logs" / "timeline.json").read_text())
    assert [s["status"] for s in timeline["stages"]] == ["ok", "failed", "failed"]
    assert sorted(timeline["not_run"]) == ["last", "second@0", "second@1"]


def ran(folder: Path) -> list[str]:
    return sorted(s["stage"] for s in json.loads((folder / "run-logs" / "timeline.json").read_text())["stages"])


def test_repro_runs_only_what_changed_and_records_it_in_dvc_lock_as_dvc_repro_would(tmp_path):
    folder = tmp_path / "cfg"
    write(folder)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=folder, check=True)
    assert main([str(folder), "--jobs", "2", "--repro"]) == 0
    assert ran(folder) == ["first", "last", "second@0", "second@1"]
    assert set(yaml.safe_load((folder / "dvc.lock").read_text())["stages"]) == {"first", "second@0", "second@1", "last"}
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=folder, check=True,
                            capture_output=True, text=True)
    assert json.loads(status.stdout) == {}

    assert main([str(folder), "--jobs", "2", "--repro"]) == 0
    assert ran(folder) == []  # up to date: nothing runs
    (folder / "second1.txt").unlink()
    assert main([str(folder), "--jobs", "2", "--repro"]) == 0
    assert ran(folder) == ["last", "second@1"]  # the changed stage and what waits on it, not its siblings


def test_repro_outside_a_dvc_repository_stops_with_one_line_and_exit_2(tmp_path, capsys):
    write(tmp_path / "cfg")
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "cfg"), "--repro"])
    assert stop.value.code == 2 and "error: `dvc status` failed" in capsys.readouterr().err
    assert not (tmp_path / "cfg" / "first.txt").exists()


def test_make_demo_runs_the_demo_side_by_side_on_a_fixed_thread_count_so_its_numbers_are_dvc_repro_s():
    assert "python -m backdoorlab.parallel . --jobs $(JOBS) --repro" in (ROOT / "Makefile").read_text()
    assert yaml.safe_load((ROOT / "demo" / "params.yaml").read_text())["train"]["threads"] == 1


def test_the_gpu_comparison_script_sets_up_the_two_anchor_rules_on_the_same_isolations(tmp_path):
    """cifar10-cpu/gpu-same-label-pool/run.sh, SETUP_ONLY: cifar10-cpu's params with seeds 0-2, abl on
    `unsuspicious`, and a third defense entry on `low_projection` that reads the same isolation and models."""
    copy = tmp_path / "repo"
    for part in ("stages", "backdoorlab", "cifar10-cpu/gpu-same-label-pool"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__", "*.png"))
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / "cifar10-cpu" / name, copy / "cifar10-cpu" / name)
    mirror = tmp_path / "mirror.tar.gz"
    mirror.write_bytes(b"")
    subprocess.run(["bash", str(copy / "cifar10-cpu/gpu-same-label-pool/run.sh"), str(mirror), "",
                    "attack.target=3"], check=True, env={**os.environ, "SETUP_ONLY": "1"},
                   capture_output=True)
    params = yaml.safe_load((copy / "gpu-table" / "params.yaml").read_text())
    assert params["seeds"] == [0, 1, 2] and params["attack"]["target"] == 3
    assert params["data"]["source"] == str(mirror)
    assert params["abl"]["same_label_pool"] == "unsuspicious"
    assert params["abl_low_projection"] == {**params["abl"], "same_label_pool": "low_projection"}
    assert '"abl_low_projection": "abl:ABL"' in (copy / "backdoorlab/defenses/__init__.py").read_text()
    graph = stages(copy / "gpu-table")
    ours, theirs = graph["defend_abl_low_projection@sig-2"], graph["defend_abl@sig-2"]
    assert ours.cmd == "python -m stages.defend abl_low_projection sig 2"
    assert ours.after == theirs.after and ours.deps == theirs.deps
    assert ours.outs == [o.replace("abl", "abl_low_projection") for o in theirs.outs]
    assert "defend_abl_low_projection@sig-2" in graph["report"].after
