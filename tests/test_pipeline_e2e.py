"""End to end: the real dvc.yaml, run by real DVC in a temporary git repository on tiny settings.

The repository is laid out like this one (the code at the top, the pipeline in a configuration
folder with its own dvc.yaml and params.yaml, a DVC sub-repository), and runs through the
warm-start worker, as `make demo` does.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from backdoorlab.attacks import ATTACKS
from backdoorlab.defenses import DEFENSES

ROOT = Path(__file__).resolve().parents[1]
TINY = {  # the demo's params, shrunk: real digits from scikit-learn, one or two epochs
    "data": {"source": "sklearn-digits", "sha256": "", "train_size": 0, "test_size": 300, "seed": 0},
    "attack": {"cl_steps": 3, "ia_epochs": 1},
    "surrogate": {"epochs": 1, "adv_steps": 2},
    "train": {"arch": "convnet", "epochs": 2, "batch_size": 64, "lr": 0.05, "schedule": "cosine",
              "milestones": [], "momentum": 0.9, "weight_decay": 0.0005, "augment": "none", "precision": "fp32",
              "threads": 1},
    "isolate": {"max_epochs": 2, "finetune_epochs": 1},
    "abl": {"max_epochs": 2},
    "abl_paper": {"max_epochs": 1},
}


def shell(repo: Path, *args: str, check: bool = True) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "TQDM_DISABLE": "1",
           "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(repo.parent.parent / "dvc-site-cache"),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def dvc(repo: Path, *args: str) -> str:
    """A dvc command through the warm-start worker, as `make demo` runs it."""
    return shell(repo, sys.executable, "-m", "backdoorlab.worker", sys.executable, "-m", "dvc", *args)


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def make_repo(top: Path) -> Path:
    top.mkdir(parents=True)
    for package in ("stages", "backdoorlab"):
        shutil.copytree(ROOT / package, top / package, ignore=shutil.ignore_patterns("__pycache__"))
    repo = top / "config"
    repo.mkdir()
    for entry in ("dvc.yaml", "stages", "backdoorlab"):
        source = ROOT / "demo" / entry
        if source.is_symlink():
            (repo / entry).symlink_to(os.readlink(source))
        else:
            shutil.copy(source, repo / entry)
    tiny = yaml.safe_load((ROOT / "demo" / "params.yaml").read_text())
    for group, values in TINY.items():
        tiny[group].update(values)
    tiny["seeds"] = [0]
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny, sort_keys=False))
    (top / ".gitignore").write_text("__pycache__/\n")
    shell(top, "git", "init", "-q")
    shell(repo, sys.executable, "-m", "dvc", "init", "--subdir", "-q")
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return make_repo(tmp_path_factory.mktemp("e2e") / "repo")


@pytest.fixture(scope="module")
def first_run(repo) -> str:
    output = dvc(repo, "repro")
    shell(repo, "git", "add", "-A")
    shell(repo, "git", "commit", "-qm", "first run")
    return output


def table_rows(repo: Path) -> list[str]:
    table = (repo / "metrics" / "results.md").read_text()
    return [line.split("|")[1].strip() for line in table.splitlines()[2:] if line.startswith("|")]


def test_repro_builds_every_row_of_the_results_table(repo, first_run):
    expected = ["clean data (reference)"]
    for attack in ATTACKS:
        expected += [f"{attack}, clean model", f"{attack}, no defense"] + [f"{attack} + {d}" for d in DEFENSES]
    assert table_rows(repo) == expected
    table = (repo / "metrics" / "results.md").read_text()
    assert "clean_label surrogate (adversarially trained)" in table and "cross-trigger" in table
    summary = json.loads((repo / "metrics" / "results.json").read_text())
    assert summary["badnets, no defense"]["asr"] >= 0 and "target_class_acc" in summary["clean data (reference)"]
    for defense in DEFENSES:
        assert (repo / "plots" / "unlearning" / f"{defense}.png").exists()
    for attack in ATTACKS:
        assert (repo / "plots" / "gallery" / f"{attack}.png").stat().st_size > 1000
        curve = repo / "logs" / "abl" / attack / "seed0" / "plots" / "metrics" / "asr.tsv"
        assert curve.read_text().startswith("step\tasr\n")  # dvclive's format, what `dvc plots show` reads
    assert "clean data (reference)" in first_run  # the report prints the table


def test_each_attacks_clean_model_row_is_the_reference_model_scored_on_that_attacks_data_sets(repo, first_run):
    reference = json.loads((repo / "metrics/scores/clean/seed0/no_defense.json").read_text())
    for attack in ATTACKS:
        row = json.loads((repo / f"metrics/scores/{attack}/seed0/clean_model.json").read_text())
        assert row["test_acc"] == reference["test_acc"] and row["class_acc"] == reference["class_acc"]
        attacked = json.loads((repo / f"metrics/scores/{attack}/seed0/no_defense.json").read_text())
        assert 0 <= row["asr"] <= 1 and row["target"] == attacked["target"]


def test_a_second_repro_has_nothing_to_do(repo, first_run):
    assert stages_run(dvc(repo, "repro")) == set()


def attack_stages(attack: str, seeds=(0,)) -> set[str]:
    per_seed = {f"{stage}@{attack}-{s}" for stage in ("train", "score_clean", "isolate") for s in seeds}
    per_seed |= {f"defend_{d}@{attack}-{s}" for d in DEFENSES for s in seeds}
    return {f"poison_{attack}", "report"} | per_seed


def test_exp_run_on_sig_delta_reruns_only_sig_and_metrics_diff_shows_only_sig(repo, first_run):
    output = dvc(repo, "exp", "run", "-S", "attack.delta=20")
    assert stages_run(output) == attack_stages("sig")
    diff = json.loads(shell(repo, sys.executable, "-m", "dvc", "metrics", "diff", "HEAD", "--json"))
    assert diff, "the SIG metrics should differ from the committed run"
    for path, changes in diff.items():
        if path.endswith("results.json"):
            assert all(key.startswith("sig") for key in changes), list(changes)
        else:
            assert "/sig/" in path, path


def stale_after_editing(repo: Path, module: str) -> set[str]:
    """The stages `dvc status` reports as changed while backdoorlab/<module> carries one extra line."""
    path = repo.parent / "backdoorlab" / module
    original = path.read_text()
    path.write_text(original + "\n# edited\n")
    try:
        return set(re.findall(r"^(\S+):$", shell(repo, sys.executable, "-m", "dvc", "status"), re.M))
    finally:
        path.write_text(original)


def test_editing_the_training_loop_makes_every_stage_that_trains_or_scores_stale(repo, first_run):
    stale = stale_after_editing(repo, "training.py")
    trains = {"surrogate", "attacker", "train_clean@0"} | {f"train@{a}-0" for a in ATTACKS}
    trains |= {f"isolate@{a}-0" for a in ATTACKS} | {f"defend_{d}@{a}-0" for d in DEFENSES for a in ATTACKS}
    trains |= {f"score_clean@{a}-0" for a in ATTACKS}
    assert trains <= stale
    assert not {name for name in stale if name == "data" or name.startswith("poison_") or name == "report"}


def test_editing_the_report_makes_only_the_report_stale(repo, first_run):
    assert stale_after_editing(repo, "report.py") == {"report"}


def test_a_defense_never_sees_the_test_set(repo, first_run, tmp_path):
    """Replacing every test image (clean and triggered) leaves the defended models byte-identical."""
    work = tmp_path / "copy"
    shutil.copytree(repo.parent, work, symlinks=True)
    config = work / "config"
    rng = np.random.default_rng(1)
    with np.load(config / "data/dataset.npz") as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["x_test"] = rng.integers(0, 256, arrays["x_test"].shape, dtype=np.uint8)
    np.savez(config / "data/dataset.npz", **arrays)
    with np.load(config / "data/poisoned/badnets/test.npz") as archive:
        test = {k: archive[k] for k in archive.files}
    test["x"] = rng.integers(0, 256, test["x"].shape, dtype=np.uint8)
    np.savez(config / "data/poisoned/badnets/test.npz", **test)
    commands = ["python -m stages.isolate badnets 0"] + [f"python -m stages.defend {d} badnets 0" for d in DEFENSES]
    shell(config, sys.executable, "-m", "backdoorlab.worker", "sh", "-ec", "; ".join(commands))
    for kind in ["finetuned", *DEFENSES]:
        path = f"models/badnets/seed0/{kind}.pt"
        assert (config / path).read_bytes() == (repo / path).read_bytes(), path
    scores = json.loads((config / "metrics/scores/badnets/seed0/abl.json").read_text())
    assert scores["test_acc"] != json.loads((repo / "metrics/scores/badnets/seed0/abl.json").read_text())["test_acc"]


def test_results_travel_through_a_dvc_remote(repo, first_run, tmp_path):
    """`dvc push` from one clone, `dvc pull` in a fresh one: nothing to rerun and the same table."""
    shell(repo, sys.executable, "-m", "dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    shell(repo, "git", "add", "-A")
    shell(repo, "git", "commit", "-qm", "remote", check=False)
    shell(repo, sys.executable, "-m", "dvc", "push", "-q")
    clone = tmp_path / "clone"
    shell(tmp_path, "git", "clone", "-q", str(repo.parent), str(clone))
    config = clone / "config"
    shell(config, sys.executable, "-m", "dvc", "pull", "-q")
    assert stages_run(dvc(config, "repro")) == set()
    assert (config / "metrics/results.md").read_text() == (repo / "metrics/results.md").read_text()


def test_adding_a_seed_runs_only_that_seeds_stages(repo, first_run):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["seeds"] = [0, 1]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = dvc(repo, "repro", "defend_abl@badnets-0", "defend_abl@badnets-1")
    # the defense reads the no-defense model too (it returns it when nothing is isolated)
    assert stages_run(output) == {"train@badnets-1", "isolate@badnets-1", "defend_abl@badnets-1"}


def test_a_sweep_runs_one_experiment_per_setting_with_only_the_attacks_stages_then_restores_the_workspace(
        repo, first_run):
    shell(repo, "git", "checkout", "HEAD", "--", ".")  # whatever the tests above left in the workspace
    shell(repo, "git", "clean", "-fdq", "--", ".")
    shell(repo, sys.executable, "-m", "dvc", "checkout", "--force", "--quiet")
    sweep = [sys.executable, "-m", "backdoorlab.sweep", "badnets", "--set", "attack.badnets_rate=0.05,0.2"]
    with (repo / "params.yaml").open("a") as params:
        params.write("# an uncommitted edit\n")
    refused = subprocess.run(sweep, cwd=repo, capture_output=True, text=True)
    assert refused.returncode == 2 and "uncommitted" in refused.stderr and len(refused.stderr.splitlines()) == 1
    shell(repo, "git", "checkout", "HEAD", "--", "params.yaml")

    output = shell(repo, sys.executable, "-m", "backdoorlab.worker", *sweep)
    assert stages_run(output) == attack_stages("badnets") - {"report"}  # no clean model, no other attack
    assert output.count("Running stage 'poison_badnets'") == 2  # one experiment per setting
    experiments = shell(repo, sys.executable, "-m", "dvc", "exp", "list", "--name-only")
    assert {"badnets-badnetsrate0.05", "badnets-badnetsrate0.2"} <= set(experiments.split())
    rows = pd.read_csv(repo / "sweeps" / "badnets.csv")
    models = ["clean data (reference)", "badnets, clean model", "badnets, no defense"]
    models += [f"badnets + {d}" for d in DEFENSES]
    for rate in (0.05, 0.2):
        assert sorted(rows.loc[rows["attack.badnets_rate"] == rate, "model"]) == sorted(models)
    assert rows["asr"].notna().any() and "target_class_acc" in rows
    tables = (repo / "sweeps" / "badnets.md").read_text()
    assert "### attack.badnets_rate=0.05\n" in tables and "### attack.badnets_rate=0.2\n" in tables
    assert shell(repo, "git", "status", "--porcelain", "--", ".", ":!sweeps").strip() == ""  # as it was


def test_a_sweep_writes_its_tables_even_where_a_committed_output_cannot_be_put_back(repo, first_run):
    """A folder whose DVC cache lacks a committed output (a clone that never ran the pipeline) cannot have it
    put back when the sweep restores the workspace: the sweep says so, and its tables are written all the
    same (they used to be lost after every experiment had run)."""
    shell(repo, "git", "checkout", "HEAD", "--", ".")
    shell(repo, "git", "clean", "-fdq", "--", ".")
    shell(repo, sys.executable, "-m", "dvc", "checkout", "--force", "--quiet")
    model = "models/blend/seed0/no_defense.pt"  # no stage of a BadNets sweep reads it
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    md5 = next(out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])
               if out["path"] == model)
    (repo / model).unlink()
    (repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).unlink()
    output = shell(repo, sys.executable, "-m", "backdoorlab.worker", sys.executable, "-m", "backdoorlab.sweep",
                   "badnets", "--set", "attack.badnets_rate=0.3", "--name", "uncached")
    assert "not in this folder's DVC cache" in output
    rows = pd.read_csv(repo / "sweeps" / "uncached.csv")
    assert set(rows["attack.badnets_rate"]) == {0.3} and rows["asr"].notna().any()
    assert "### attack.badnets_rate=0.3\n" in (repo / "sweeps" / "uncached.md").read_text()
    assert not (repo / model).exists()
