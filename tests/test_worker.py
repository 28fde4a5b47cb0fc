"""The warm-start worker hands DVC commands to backdoorlab.dvcrun (DVC with a cheaper dvc.lock rewrite)."""
from __future__ import annotations

import pytest

from backdoorlab import worker


@pytest.mark.parametrize("command, expected", [
    (["dvc", "repro"], ["repro"]),
    (["/venv/bin/dvc", "exp", "run", "-S", "attack.delta=20"], ["exp", "run", "-S", "attack.delta=20"]),
    (["/usr/bin/python3", "-m", "dvc", "status"], ["status"]),
    (["python", "-m", "backdoorlab.sweep", "badnets"], None),
    (["sh", "-c", "dvc repro"], None),
    ([], None),
])
def test_dvc_commands_are_recognised_and_nothing_else(command, expected):
    assert worker.dvc_arguments(command) == expected
