"""`python -m backdoorlab.dvcrun` is DVC with a cheaper dvc.lock rewrite: the same bytes, less work."""
from __future__ import annotations

from collections import OrderedDict
from io import StringIO
from pathlib import Path

import pytest
from dvc import dvcfile
from dvc.utils import strictyaml
from dvc.utils.serialize import _yaml

from backdoorlab import dvcrun

ROOT = Path(__file__).resolve().parents[1]


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

    undo_patches(monkeypatch)
    dvcs_own = three_updates(dvcfile.modify_yaml, "round-trip")
    assert dvcrun.fast_lockfile_rewrites()

    def slow_parser(*_):
        raise AssertionError("dvc.lock parsed by the round trip")

    monkeypatch.setattr(_yaml, "parse_yaml_for_update", slow_parser)
    assert three_updates(dvcfile.modify_yaml, "fast") == dvcs_own


def test_files_other_than_dvc_lock_keep_dvcs_round_trip_and_their_comments(tmp_path, monkeypatch):
    undo_patches(monkeypatch)
    assert dvcrun.fast_lockfile_rewrites()
    path = tmp_path / "dvc.yaml"
    path.write_text("stages:\n  report:  # the table\n    cmd: python -m stages.report\n")
    with dvcfile.modify_yaml(path) as data:
        data["stages"]["report"]["cmd"] = "python -m stages.report --all"
    assert "# the table" in path.read_text()


@pytest.mark.parametrize("config", ["demo", "cifar10-cpu"])
def test_the_committed_lock_files_come_out_byte_for_byte_after_a_stage_changes(config):
    text = (ROOT / config / "dvc.lock").read_text()
    data = _yaml.parse_yaml(text, "dvc.lock")
    write = dvcrun.entry_writer(_yaml._dump)
    assert written(write, data) == text
    name = next(iter(data["stages"]))
    data["stages"][name] = lock_entry("python -m stages.data --changed")
    assert written(write, data) == written(_yaml._dump, data)


def test_an_unchanged_stage_entry_is_serialized_once():
    calls = []

    def dump(data, stream):
        calls.append(data)
        _yaml._dump(data, stream)

    write = dvcrun.entry_writer(dump)
    data = {"schema": "2.0", "stages": {"a": lock_entry("python -m a"), "b": lock_entry("python -m b")}}
    first = written(write, data)
    data["stages"]["b"] = lock_entry("python -m b --again")
    second = written(write, data)
    assert [list(c.get("stages", c)) for c in calls] == [["schema"], ["a"], ["b"], ["schema"], ["b"]]
    assert first == written(_yaml._dump, {**data, "stages": {**data["stages"], "b": lock_entry("python -m b")}})
    assert second == written(_yaml._dump, data)


def test_data_that_shares_an_object_is_written_whole_as_dvc_would_with_its_anchor():
    shared = {"params.yaml": {"lr": 0.1}}
    data = {"schema": "2.0", "stages": {"a": {"cmd": "a", "params": shared}, "b": {"cmd": "b", "params": shared}}}
    text = written(dvcrun.entry_writer(_yaml._dump), data)
    assert text == written(_yaml._dump, data) and "&" in text


def written(write, data) -> str:
    out = StringIO()
    write(data, out)
    return out.getvalue()


def test_a_text_read_again_is_parsed_once_and_every_reader_gets_its_own_copy():
    texts = []

    def parse(text, path, typ="safe"):
        texts.append(text)
        return _yaml.parse_yaml(text, path, typ=typ)

    read = dvcrun.RememberingParser(parse, keep=2)
    first, again = read("a: [1, 2]\n", "dvc.lock"), read("a: [1, 2]\n", "dvc.lock")
    assert first == again == {"a": [1, 2]} and first is not again and first["a"] is not again["a"]
    first["a"].append(3)  # DVC edits what it reads: the next reader must not see it
    assert read("a: [1, 2]\n", "dvc.lock") == {"a": [1, 2]}
    read("b: 1\n", "x"), read("c: 1\n", "x"), read("a: [1, 2]\n", "dvc.lock")  # only the last 2 are kept
    read("a: x\n", "dvc.lock", typ="rt")  # the round trip is never kept
    read("a: x\n", "dvc.lock", typ="rt")
    assert texts == ["a: [1, 2]\n", "b: 1\n", "c: 1\n", "a: [1, 2]\n", "a: x\n", "a: x\n"]


def same(a, b) -> bool:
    """Equal with the same types all the way down (1 == 1.0 == True in Python, not in YAML)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def test_a_lock_just_written_is_read_back_without_parsing_as_parsing_its_text_would_give_it(tmp_path, monkeypatch):
    undo_patches(monkeypatch)
    parsed = []
    original = _yaml.parse_yaml

    def counting(text, path, typ="safe"):
        parsed.append(text)
        return original(text, path, typ=typ)

    monkeypatch.setattr(_yaml, "parse_yaml", counting)
    assert dvcrun.fast_lockfile_rewrites()
    path = tmp_path / "dvc.lock"
    committed = original((ROOT / "demo" / "dvc.lock").read_text(), "dvc.lock")
    with dvcfile.modify_yaml(path) as data:
        data.update(committed)
        data["stages"]["train@badnets-0"] = lock_entry("python -m stages.train badnets 0 --awkward")
    text = path.read_text()
    parsed.clear()
    assert same(strictyaml.parse_yaml(text, str(path)), original(text, str(path)))
    assert parsed == []  # remembered from the write


def test_data_with_a_type_the_safe_loader_never_returns_is_not_remembered():
    parsed = []

    def parse(text, path, typ="safe"):
        parsed.append(text)
        return _yaml.parse_yaml(text, path, typ=typ)

    read = dvcrun.RememberingParser(parse)
    read.remember("a:\n- 1\n", {"a": (1,)})  # a tuple: the loader gives a list back
    read.remember("b: x\n", {"b": "x"})
    assert read("a:\n- 1\n", "dvc.lock") == {"a": [1]} and read("b: x\n", "dvc.lock") == {"b": "x"}
    assert parsed == ["a:\n- 1\n"]


def test_a_text_is_checked_against_a_schema_once_and_a_failing_one_every_time():
    from voluptuous import Schema

    checks = []
    lock_schema, other_schema = Schema({"a": int}), Schema({"a": int})

    def validate(data, schema, text=None, path=None, rev=None):
        checks.append((text, schema is lock_schema))
        return strictyaml.validate(data, schema, text=text, path=path, rev=rev)

    checked = dvcrun.remembering_validator(validate)
    for _ in range(2):
        checked({"a": 1}, lock_schema, text="a: 1\n", path="dvc.lock")
    checked({"a": 1}, other_schema, text="a: 1\n", path="dvc.lock")  # another schema: checked
    checked({"a": 1}, lock_schema)  # no text: DVC uses the result, checked every time
    for _ in range(2):
        with pytest.raises(strictyaml.YAMLValidationError):
            checked({"a": "x"}, lock_schema, text="a: x\n", path="dvc.lock")
    assert checks == [("a: 1\n", True), ("a: 1\n", False), (None, True), ("a: x\n", True), ("a: x\n", True)]


def undo_patches(monkeypatch) -> None:
    """fast_lockfile_rewrites patches DVC's module attributes; the test puts them back afterwards."""
    monkeypatch.setattr(dvcfile, "modify_yaml", dvcfile.modify_yaml)
    monkeypatch.setattr(strictyaml, "parse_yaml", strictyaml.parse_yaml)
    monkeypatch.setattr(strictyaml, "validate", strictyaml.validate)
