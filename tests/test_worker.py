"""The warm-start worker runs DVC commands in its own process, where dvc.lock is read with the fast parser."""
from __future__ import annotations

from collections import OrderedDict

import pytest
from dvc import dvcfile
from dvc.utils.serialize import _yaml

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


def lock_entry(cmd: str) -> OrderedDict:
    """A stage's dvc.lock entry as DVC builds it, with the values whose YAML style is easy to get wrong."""
    params = {"yes": "yes", "on": "on", "exponent_text": "1e-5", "exponent": 1e-05, "small": 0.0005, "empty": "",
              "none": None, "null_text": "null", "unicode": "é ü", "mixed_list": [1, 2.5, "3"], "flag": True,
              "leading_zero": "010", "big": 10 ** 20, "inf": float("inf"), "colon": "a: b", "hash_mark": "#c",
              "newline": "line\nbreak", "negative_zero": -0.0, "nested": {"empty_list": []}, "hex_text": "0x10"}
    return OrderedDict([
        ("cmd", cmd),
        ("deps", [OrderedDict([("path", "a b.py"), ("hash", "md5"), ("md5", "0123"), ("size", 12)])]),
        ("params", {"params.yaml": params}),
        ("outs", [OrderedDict([("path", "out"), ("hash", "md5"), ("md5", "x.dir"), ("size", 1), ("nfiles", 2)])]),
    ])


def test_the_fast_lockfile_path_writes_the_bytes_dvc_writes(tmp_path, monkeypatch):
    """Three successive updates of one dvc.lock, by DVC's own round trip and by the patched one."""
    long_cmd = "python -m stages.train --attack badnets --seed 0 " + "x" * 90  # folded at 80 columns

    def three_updates(modify, folder):
        path = tmp_path / folder / "dvc.lock"
        path.parent.mkdir()
        with modify(path) as data:
            data.update({"schema": "2.0", "stages": {"train@badnets-0": lock_entry(long_cmd)}})
        with modify(path) as data:
            data["stages"]["report"] = OrderedDict([("cmd", "python -m stages.report")])
        with modify(path) as data:
            data["stages"]["train@badnets-0"] = lock_entry(long_cmd.replace("x", "y"))
        return path.read_bytes()

    monkeypatch.setattr(dvcfile, "modify_yaml", dvcfile.modify_yaml)  # undone after the test
    dvcs_own = three_updates(dvcfile.modify_yaml, "round-trip")
    assert worker.fast_lockfile_writes()

    def slow_parser(*_):
        raise AssertionError("dvc.lock parsed by the round trip")

    monkeypatch.setattr(_yaml, "parse_yaml_for_update", slow_parser)
    assert three_updates(dvcfile.modify_yaml, "fast") == dvcs_own


def test_files_other_than_dvc_lock_keep_dvcs_round_trip_and_their_comments(tmp_path, monkeypatch):
    monkeypatch.setattr(dvcfile, "modify_yaml", dvcfile.modify_yaml)
    assert worker.fast_lockfile_writes()
    path = tmp_path / "dvc.yaml"
    path.write_text("stages:\n  report:  # the table\n    cmd: python -m stages.report\n")
    with dvcfile.modify_yaml(path) as data:
        data["stages"]["report"]["cmd"] = "python -m stages.report --all"
    assert "# the table" in path.read_text()
