"""The import structure: no cycles, registries that import an attack or defense only when asked, and
code deps fine-grained enough that editing one module reruns only the stages that run it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from backdoorlab import codedeps
from backdoorlab.attacks import ATTACKS
from backdoorlab.defenses import DEFENSES

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def project_modules(root: Path) -> list[str]:
    """Every module under the project's packages, as dotted names."""
    names = []
    for package in codedeps.PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def find_cycle(root: Path) -> list[str] | None:
    """One import cycle among the project's modules (first module repeated at the end), or None."""
    graph = {m: sorted(codedeps.imported_modules(m, root)) for m in project_modules(root)}
    state: dict[str, str] = {}  # "open" while on the current path, "done" once fully explored
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for dep in graph.get(module, []):
            if state.get(dep) == "open":
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[module] = "done"
        return None

    for module in graph:
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_project_has_no_import_cycle():
    cycle = find_cycle(ROOT)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_reports_a_planted_cycle(tmp_path):
    package = tmp_path / "backdoorlab"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import g\n\ndef f():\n    return g()\n")
    (package / "b.py").write_text("def g():\n    from .c import h\n    return h()\n")  # inside a function counts
    (package / "c.py").write_text("from backdoorlab import a\n")
    (package / "d.py").write_text("from . import a\n")  # depends on the cycle, not part of it
    cycle = find_cycle(tmp_path)
    assert cycle is not None
    assert cycle[0] == cycle[-1] and set(cycle) == {"backdoorlab.a", "backdoorlab.b", "backdoorlab.c"}


def modules_loaded_by(code: str) -> list[str]:
    """Run `code` in a fresh interpreter; the project's attack and defense modules it loaded."""
    script = code + ("\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules "
                     "if m.startswith(('backdoorlab.attacks.', 'backdoorlab.defenses.')))))")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_importing_the_registries_loads_no_attack_or_defense_module():
    assert modules_loaded_by("import backdoorlab.attacks, backdoorlab.defenses") == []


def test_asking_a_registry_for_one_entry_loads_that_module_only():
    loaded = modules_loaded_by("import backdoorlab.attacks, backdoorlab.defenses\n"
                               "backdoorlab.attacks.attack_class('badnets')\n"
                               "backdoorlab.defenses.param_keys('abl')\n")
    assert loaded == ["backdoorlab.attacks.badnets", "backdoorlab.attacks.base", "backdoorlab.defenses.abl",
                      "backdoorlab.defenses.base", "backdoorlab.defenses.isolation"]  # abl's own phase 1


# ------------------------------------------------------------------ fine-grained code deps

def deps_of(stage: str) -> list[str]:
    """The code deps codedeps gives a dvc.yaml stage's command."""
    return codedeps.code_deps(STAGES[stage]["cmd"], ROOT)


ATTACK_FILES = {f"backdoorlab/attacks/{ATTACKS[a].split(':')[0]}.py" for a in ATTACKS}
DEFENSE_FILES = {f"backdoorlab/defenses/{DEFENSES[d].split(':')[0]}.py" for d in DEFENSES}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_poison_stage_depends_on_its_own_attack_module_and_no_other(attack):
    own = f"backdoorlab/attacks/{ATTACKS[attack].split(':')[0]}.py"
    deps = set(deps_of(f"poison_{attack}"))
    assert own in deps
    assert deps & ATTACK_FILES == {own}
    assert not deps & DEFENSE_FILES


def test_the_report_stage_does_not_depend_on_the_training_loop():
    deps = deps_of("report")
    assert "backdoorlab/training.py" not in deps
    assert not set(deps) & (ATTACK_FILES | DEFENSE_FILES)


TRAINING_STAGES = ["train_clean", "train", "isolate", "surrogate", "attacker",
                   *(f"defend_{d}" for d in DEFENSES)]


@pytest.mark.parametrize("stage", TRAINING_STAGES)
def test_every_stage_that_trains_or_scores_a_model_depends_on_the_training_loop(stage):
    assert "backdoorlab/training.py" in deps_of(stage)


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_editing_the_training_loop_does_not_rerun_a_poison_stage(attack):
    assert "backdoorlab/training.py" not in deps_of(f"poison_{attack}")


@pytest.mark.parametrize("defense", list(DEFENSES))
def test_a_defense_stage_depends_on_its_defense_module(defense):
    own = f"backdoorlab/defenses/{DEFENSES[defense].split(':')[0]}.py"
    assert own in deps_of(f"defend_{defense}")
