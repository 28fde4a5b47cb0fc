"""dvc.yaml agrees with the code: every stage, as DVC expands it for each configuration, declares exactly
the params it reads and exactly the code it runs; every registered attack and defense is wired in."""
from __future__ import annotations

import importlib
import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from backdoorlab import attacks, codedeps, defenses, layout, params

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = PIPELINE["stages"]
ATTACK_LIST = PIPELINE["vars"][0]["attacks"]
CONFIGS = {"paper": ROOT, "demo": ROOT / "demo", "cifar10-cpu": ROOT / "cifar10-cpu"}
ITEM = {"attack": "${item.attack}", "seed": "${item.seed}"}  # for paths written with DVC's placeholders


@dataclass
class Stage:
    name: str
    cmd: str
    params: list[str]


def lookup(reference: str, context: dict):
    """DVC's `${a.b}` interpolation of a whole value."""
    assert reference.startswith("${") and reference.endswith("}"), reference
    value = context
    for part in reference[2:-1].split("."):
        value = value[part]
    return value


def expanded_stages(config: Path) -> list[Stage]:
    """The stages DVC runs in one configuration: `matrix` stages expanded over the attacks list
    (dvc.yaml's vars) and that configuration's `seeds` (its params.yaml)."""
    context = {**{k: v for entry in PIPELINE["vars"] for k, v in entry.items()},
               **yaml.safe_load((config / "params.yaml").read_text())}
    out = []
    for name, stage in STAGES.items():
        assert "foreach" not in stage, f"{name}: expected matrix stages only"
        if "matrix" not in stage:
            out.append(Stage(name, stage["cmd"], stage.get("params", [])))
            continue
        axes = {key: lookup(values, context) if isinstance(values, str) else values
                for key, values in stage["matrix"].items()}
        for combination in itertools.product(*axes.values()):
            cmd = stage["cmd"]
            for key, value in zip(axes, combination):
                cmd = cmd.replace(f"${{item.{key}}}", str(value))
            assert "${" not in cmd, f"{name}: {cmd}"
            out.append(Stage(f"{name}@{'-'.join(map(str, combination))}", cmd, stage.get("params", [])))
    return out


def keys_read_by(command: str) -> list[str]:
    """The params a stage command reads, as its module (or the attack or defense it names) says."""
    words = command.split()
    assert words[:2] == ["python", "-m"], command
    module, args = words[2], words[3:]
    if module == "stages.poison":
        return attacks.param_keys(args[0])
    if module == "stages.defend":
        return params.MODEL_KEYS + defenses.param_keys(args[0])
    return importlib.import_module(module).PARAMS


CASES = [(config, stage) for config, folder in CONFIGS.items() for stage in expanded_stages(folder)]


@pytest.mark.parametrize("config,stage", CASES, ids=[f"{c}:{s.name}" for c, s in CASES])
def test_each_stage_declares_exactly_the_params_it_reads(config, stage):
    assert len(set(stage.params)) == len(stage.params), f"{stage.name} declares a param twice"
    assert sorted(stage.params) == sorted(keys_read_by(stage.cmd)), stage.name


def test_seeded_stages_expand_over_every_seed_of_each_configuration():
    for config, folder in CONFIGS.items():
        seeds = params.check_seeds(folder / "params.yaml")
        names = {s.name for s in expanded_stages(folder)}
        for seed in seeds:
            assert f"train_clean@{seed}" in names, config
            for attack in ATTACK_LIST:
                assert {f"train@{attack}-{seed}", f"isolate@{attack}-{seed}"} <= names, config
                assert {f"defend_{d}@{attack}-{seed}" for d in defenses.DEFENSES} <= names, config


def test_matrix_stages_take_attacks_and_seeds_from_the_shared_lists():
    """So adding an attack or a seed reaches every stage that runs per attack or per seed."""
    for name, stage in STAGES.items():
        if "matrix" in stage:
            assert set(stage["matrix"].values()) <= {"${attacks}", "${seeds}"}, name
            assert stage["matrix"].get("seed") == "${seeds}", name


def test_every_registered_attack_has_a_poison_stage_and_is_trained_on():
    assert sorted(ATTACK_LIST) == sorted(attacks.ATTACKS)
    for attack in attacks.ATTACKS:
        stage = STAGES[f"poison_{attack}"]
        assert stage["cmd"] == f"python -m stages.poison {attack}"
        assert str(layout.poisoned_dir(attack)) in stage["outs"]
    for name in ("train", "isolate"):
        assert STAGES[name]["matrix"]["attack"] == "${attacks}"
    assert {n for n in STAGES if n.startswith("poison_")} == {f"poison_{a}" for a in attacks.ATTACKS}


@pytest.mark.parametrize("defense", list(defenses.DEFENSES))
def test_every_registered_defense_has_a_stage_block_running_it_per_attack_and_seed(defense):
    stage = STAGES[f"defend_{defense}"]
    assert stage["cmd"] == f"python -m stages.defend {defense} ${{item.attack}} ${{item.seed}}"
    assert stage["matrix"] == {"attack": "${attacks}", "seed": "${seeds}"}
    model = str(layout.model_file(ITEM["attack"], ITEM["seed"], defense))
    scores = str(layout.scores_file(ITEM["attack"], ITEM["seed"], defense))
    assert model in stage["outs"]
    assert scores in [next(iter(m)) if isinstance(m, dict) else m for m in stage["metrics"]]


@pytest.mark.parametrize("defense", list(defenses.DEFENSES))
def test_a_defenses_inputs_are_deps_of_its_stage_and_outputs_of_an_earlier_one(defense):
    inputs = [str(p) for p in defenses.defense_class(defense)(defense, {}).inputs(ITEM["attack"], ITEM["seed"])]
    assert inputs
    assert set(inputs) <= set(STAGES[f"defend_{defense}"]["deps"])
    outs = {out if isinstance(out, str) else next(iter(out)) for name, stage in STAGES.items()
            if not name.startswith("defend_") for out in stage.get("outs", [])}
    assert set(inputs) <= outs


def test_every_defense_block_names_a_registered_defense():
    blocks = {n.removeprefix("defend_") for n, s in STAGES.items() if s["cmd"].startswith("python -m stages.defend")}
    assert blocks == set(defenses.DEFENSES)


@pytest.mark.parametrize("config", ["demo", "cifar10-cpu"])
def test_every_configuration_runs_an_exact_copy_of_the_pipeline_file(config):
    copy = ROOT / config / "dvc.yaml"
    # a real file: DVC does not follow symlinks when it reads dvc.yaml from a git commit
    assert not copy.is_symlink()
    assert copy.read_bytes() == (ROOT / "dvc.yaml").read_bytes(), f"{config}/dvc.yaml is stale: run `make pipelines`"


# ------------------------------------------------------------------ code deps

def test_every_stage_declares_exactly_the_code_it_imports():
    assert codedeps.check(ROOT / "dvc.yaml", ROOT) == [], "code deps out of date: run `make pipelines`"


def edited_pipeline(tmp_path: Path, stage: str, edit) -> Path:
    tree = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    edit(tree["stages"][stage]["deps"])
    path = tmp_path / "dvc.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.mark.parametrize("stage,dep", [("poison_badnets", "backdoorlab/attacks/badnets.py"),
                                       ("defend_abl", "backdoorlab/defenses/abl.py"),
                                       ("train", "backdoorlab/training.py"),
                                       ("report", "backdoorlab/report.py")])
def test_the_code_deps_check_names_a_stage_missing_a_module_it_imports(tmp_path, stage, dep):
    def drop(deps):
        deps.remove(dep)

    assert codedeps.check(edited_pipeline(tmp_path, stage, drop), ROOT) == [stage]


def test_the_code_deps_check_names_a_stage_declaring_a_module_it_does_not_import(tmp_path):
    def add(deps):
        deps.append("backdoorlab/attacks/blend.py")

    assert codedeps.check(edited_pipeline(tmp_path, "poison_badnets", add), ROOT) == ["poison_badnets"]


def test_writing_the_code_deps_restores_a_stale_file_exactly_keeping_comments_and_data_deps(tmp_path):
    original = (ROOT / "dvc.yaml").read_text()
    line = "      - backdoorlab/attacks/badnets.py\n"
    assert original.count(line) == 1
    stale = tmp_path / "dvc.yaml"
    stale.write_text(original.replace(line, ""))
    assert codedeps.check(stale, ROOT) == ["poison_badnets"]
    codedeps.write(stale, ROOT)
    assert stale.read_text() == original
