"""Bad params stop a stage at once: exit code 2, one line naming the key and what is allowed, nothing written."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from backdoorlab import params
from backdoorlab.attacks import ATTACKS
from backdoorlab.datasets import load_source

ROOT = Path(__file__).resolve().parents[1]
DEMO_PARAMS = yaml.safe_load((ROOT / "demo" / "params.yaml").read_text())


@pytest.fixture(scope="module")
def dataset_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "dataset.npz"
    load_source("sklearn-digits", test_size=300).save(path)
    return path


def run_stage(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=workdir, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)})


def workdir_with(tmp_path: Path, dataset_file: Path, edit) -> Path:
    tree = yaml.safe_load(yaml.safe_dump(DEMO_PARAMS))
    edit(tree)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset.npz").write_bytes(dataset_file.read_bytes())
    return tmp_path


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def set_key(key: str, value):
    def edit(tree):
        group, name = key.split(".")
        tree[group][name] = value
    return edit


def drop_key(key: str):
    def edit(tree):
        group, name = key.split(".")
        del tree[group][name]
    return edit


CASES = {
    "unknown attack": (lambda t: None, ["stages.poison", "nope"],
                       "error: attack: unknown attack 'nope'; allowed: " + ", ".join(ATTACKS)),
    "rate 1.5": (set_key("attack.badnets_rate", 1.5), ["stages.poison", "badnets"],
                 "error: attack.badnets_rate: got 1.5 (float); allowed: a number in [0, 1]"),
    "target 10 of 10 classes": (set_key("attack.target", 10), ["stages.poison", "badnets"],
                                "error: attack.target: got 10 but the dataset has 10 classes; "
                                "allowed: an integer in [0, 9]"),
    "string for a number": (set_key("train.lr", "fast"), ["stages.train", "clean"],
                            "error: train.lr: got 'fast' (str); allowed: a number > 0"),
    "missing key": (drop_key("isolate.gamma"), ["stages.isolate", "badnets"],
                    "error: isolate.gamma: missing from params.yaml; allowed: a number >= 0"),
    "unknown model": (set_key("train.arch", "vgg"), ["stages.train", "clean"],
                      "error: train.arch: got 'vgg' (str); allowed: one of resnet18, wrn16-1, wrn16-4, convnet"),
    "boolean for an integer": (set_key("train.epochs", True), ["stages.train", "clean"],
                               "error: train.epochs: got True (bool); allowed: an integer >= 1"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_params_fail_with_one_line_and_write_nothing(tmp_path, dataset_file, case):
    edit, command, expected = CASES[case]
    workdir = workdir_with(tmp_path, dataset_file, edit)
    before = files_under(workdir)
    result = run_stage(workdir, *command)
    assert result.returncode == 2
    assert result.stderr.strip() == expected
    assert result.stdout == ""
    assert files_under(workdir) == before


def test_the_same_workdir_with_good_params_does_write(tmp_path, dataset_file):
    workdir = workdir_with(tmp_path, dataset_file, lambda t: None)
    result = run_stage(workdir, "stages.poison", "badnets")
    assert result.returncode == 0, result.stderr
    assert (workdir / "data/poisoned/badnets/train.npz").exists()
    assert (workdir / "plots/gallery/badnets.png").exists()


@pytest.mark.parametrize("stage", ["data", "poison", "train", "isolate", "unlearn", "evaluate", "report"])
def test_every_stage_explains_itself_with_help(stage):
    result = run_stage(ROOT, f"stages.{stage}", "--help")
    assert result.returncode == 0
    assert "Reads" in result.stdout and "Writes" in result.stdout


def test_schema_accepts_the_shipped_params_files():
    for path in [ROOT / "params.yaml", ROOT / "demo" / "params.yaml"]:
        values = params.load(params.SCHEMA, path)
        assert values["attack.target"] == 0


def test_unreadable_yaml_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("train: [unclosed\n")
    with pytest.raises(params.ParamError) as error:
        params.load(["train.lr"], tmp_path / "params.yaml")
    assert "\n" not in str(error.value) and "not valid YAML" in str(error.value)


@pytest.mark.parametrize("value,ok", [(0, True), (1, True), (0.5, True), (-0.1, False), (1.01, False),
                                      (float("nan"), False), ("0.1", False), (None, False), (True, False)])
def test_rates_are_numbers_in_the_unit_interval(value, ok):
    assert params.rate().check(value) is ok


def test_milestones_must_increase():
    spec = params.int_list(1)
    assert spec.check([40, 60]) and spec.check([])
    assert not spec.check([60, 40]) and not spec.check([0]) and not spec.check("40")
