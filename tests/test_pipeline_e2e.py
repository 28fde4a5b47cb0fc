"""End to end: the real dvc.yaml, run by real DVC in a temporary git repository on tiny settings."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from backdoorlab.attacks import ATTACKS

ROOT = Path(__file__).resolve().parents[1]
TINY = {  # the demo's params, shrunk: real digits from scikit-learn, one or two epochs
    "data": {"source": "sklearn-digits", "sha256": "", "train_size": 0, "test_size": 300, "seed": 0},
    "attack": {"cl_steps": 3, "ia_epochs": 1},
    "surrogate": {"epochs": 1, "adv_steps": 2},
    "train": {"arch": "convnet", "epochs": 2, "batch_size": 64, "lr": 0.05, "schedule": "cosine",
              "milestones": [], "momentum": 0.9, "weight_decay": 0.0005, "augment": "crop",
              "precision": "fp32", "seed": 0},
    "isolate": {"epochs": 1, "lr": 0.05, "schedule": "cosine", "gamma": 0.5, "ratio": 0.01, "lga": "batch"},
    "unlearn": {"finetune_epochs": 1, "finetune_lr": 0.05, "finetune_milestones": [], "epochs": 2,
                "lr": 0.002, "batch_size": 16, "loss_cap": 5.0, "clean_ratio": 4},
}


def shell(repo: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "TQDM_DISABLE": "1",
           "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(repo.parent / "dvc-site-cache"),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    result = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A git repository laid out like this one: the code at the top, the pipeline in a configuration
    folder made like demo/ (its dvc.yaml, links to the code, a DVC sub-repository), on tiny params."""
    top = tmp_path_factory.mktemp("e2e") / "repo"
    top.mkdir()
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
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny, sort_keys=False))
    (top / ".gitignore").write_text("__pycache__/\n")
    shell(top, "git", "init", "-q")
    shell(repo, sys.executable, "-m", "dvc", "init", "--subdir", "-q")
    return repo


@pytest.fixture(scope="module")
def first_run(repo) -> str:
    output = shell(repo, sys.executable, "-m", "dvc", "repro")
    shell(repo, "git", "add", "-A")
    shell(repo, "git", "commit", "-qm", "first run")
    return output


def test_repro_builds_every_row_of_the_results_table(repo, first_run):
    table = (repo / "metrics" / "results.md").read_text()
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:] if line.startswith("|")]
    expected = ["clean data (reference)"]
    for attack in ATTACKS:
        if attack == "input_aware":
            expected.append("input_aware, attacker's own model")
        expected += [f"{attack}, no defense", f"{attack} + ABL"]
    assert rows == expected
    assert "clean_label surrogate (adversarially trained)" in table
    assert "cross-trigger" in table
    assert (repo / "plots" / "unlearning.png").exists()
    assert (repo / "plots" / "gallery" / "clean_label_eps.png").exists()
    assert (repo / "plots" / "gallery" / "input_aware_triggers.png").exists()
    for attack in ATTACKS:
        assert (repo / "plots" / "gallery" / f"{attack}.png").stat().st_size > 1000
        assert (repo / "logs" / "unlearn" / attack / "asr.tsv").read_text().startswith("epoch\tasr\n")
    assert "clean data (reference)" in first_run  # the report prints the table


def test_a_second_repro_has_nothing_to_do(repo, first_run):
    assert stages_run(shell(repo, sys.executable, "-m", "dvc", "repro")) == set()


def attack_stages(attack: str) -> set[str]:
    return {f"poison_{attack}", f"train@{attack}", f"isolate@{attack}", f"unlearn@{attack}",
            f"evaluate@{attack}", "report"}


def test_exp_run_on_a_badnets_knob_reruns_only_badnets_stages(repo, first_run):
    output = shell(repo, sys.executable, "-m", "dvc", "exp", "run", "-S", "attack.badnets_rate=0.2")
    assert stages_run(output) == attack_stages("badnets")
    poisoned = yaml.safe_load((repo / "data/poisoned/badnets/meta.json").read_text())
    assert poisoned["knobs"] == {"badnets_rate": 0.2}
    shell(repo, "git", "add", "-A")
    shell(repo, "git", "commit", "-qm", "badnets at 20%")


def test_exp_run_on_sig_delta_reruns_only_sig_and_metrics_diff_shows_only_sig(repo, first_run):
    output = shell(repo, sys.executable, "-m", "dvc", "exp", "run", "-S", "attack.delta=20")
    assert stages_run(output) == attack_stages("sig")
    diff = yaml.safe_load(shell(repo, sys.executable, "-m", "dvc", "metrics", "diff", "HEAD", "--json"))
    assert diff, "the SIG metrics should differ from the committed run"
    assert all(path.endswith(("evaluate/sig.json", "isolation/sig.json")) for path in diff), list(diff)
