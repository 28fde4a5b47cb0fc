"""dvc.yaml agrees with the code: every stage declares exactly the params it reads, every attack is wired."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from backdoorlab.attacks import ATTACKS, param_keys

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = yaml.safe_load((ROOT / "dvc.yaml").read_text())
ATTACK_LIST = PIPELINE["vars"][0]["attacks"]


def expanded_stages():
    """(stage name, command, declared params) with foreach stages expanded over the attack list."""
    for name, stage in PIPELINE["stages"].items():
        if "foreach" in stage:
            for item in ATTACK_LIST:
                body = stage["do"]
                yield f"{name}@{item}", body["cmd"].replace("${item}", item), body.get("params", [])
        else:
            yield name, stage["cmd"], stage.get("params", [])


def keys_read_by(command: str) -> list[str]:
    words = command.split()
    module = importlib.import_module(words[2])  # python -m stages.<module> [name]
    if words[2] == "stages.poison":
        return param_keys(words[3])
    return module.PARAMS


@pytest.mark.parametrize("stage,command,declared", list(expanded_stages()), ids=lambda v: str(v)[:40])
def test_each_stage_declares_exactly_the_params_it_reads(stage, command, declared):
    assert sorted(declared) == sorted(keys_read_by(command)), stage


def test_every_registered_attack_has_a_poison_stage_and_runs_downstream():
    assert sorted(ATTACK_LIST) == sorted(ATTACKS)
    for attack in ATTACKS:
        stage = PIPELINE["stages"][f"poison_{attack}"]
        assert stage["cmd"] == f"python -m stages.poison {attack}"
        assert f"backdoorlab/attacks/{attack}.py" in stage["deps"]


@pytest.mark.parametrize("config", ["demo", "cifar10-cpu"])
def test_every_configuration_runs_an_exact_copy_of_the_pipeline_file(config):
    copy = ROOT / config / "dvc.yaml"
    # a real file: DVC does not follow symlinks when it reads dvc.yaml from a git commit
    assert not copy.is_symlink()
    assert copy.read_bytes() == (ROOT / "dvc.yaml").read_bytes(), f"{config}/dvc.yaml is stale: run `make pipelines`"


def test_code_dependencies_exist():
    for name, stage in PIPELINE["stages"].items():
        body = stage.get("do", stage)
        for dep in body.get("deps", []):
            if dep.startswith(("stages/", "backdoorlab/")):
                assert (ROOT / dep.replace("${item}", ATTACK_LIST[0])).exists(), (name, dep)
