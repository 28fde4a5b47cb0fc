"""Artifacts are written atomically and read back without running code."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch

from backdoorlab.storage import (atomic_path, load_arrays, load_checkpoint, save_arrays, save_checkpoint, save_json,
                                 save_text)


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    target = tmp_path / "out" / "result.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_rewrite_replaces_the_old_file_whole(tmp_path):
    save_json(tmp_path / "m.json", {"a": 1, "padding": "x" * 100})
    save_json(tmp_path / "m.json", {"a": 2})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary left beside it


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield 0o022
    os.umask(old)


@pytest.mark.parametrize("write", [lambda p: save_json(p, {"a": 1}), lambda p: save_text(p, "text"),
                                   lambda p: save_arrays(p, x=np.arange(3)),
                                   lambda p: save_checkpoint(p, {"w": torch.zeros(2)})],
                         ids=["json", "text", "arrays", "checkpoint"])
def test_atomically_written_files_get_the_mode_a_plain_write_gives(tmp_path, umask_022, write):
    write(tmp_path / "atomic")
    with open(tmp_path / "plain", "w"):
        pass
    mode = stat.S_IMODE((tmp_path / "atomic").stat().st_mode)
    assert mode == 0o666 & ~umask_022 == 0o644
    assert mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode)


def test_the_mode_follows_the_umask_in_force(tmp_path, umask_022):
    os.umask(0o077)
    save_json(tmp_path / "private.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600


def test_arrays_round_trip_and_object_arrays_are_refused(tmp_path):
    save_arrays(tmp_path / "a.npz", x=np.arange(3, dtype=np.uint8), names=np.array(["cat", "dog"]))
    loaded = load_arrays(tmp_path / "a.npz")
    assert loaded["x"].tolist() == [0, 1, 2] and loaded["names"].tolist() == ["cat", "dog"]
    with pytest.raises(TypeError):
        save_arrays(tmp_path / "b.npz", x=np.array([{"a": 1}], dtype=object))


def test_pickled_arrays_do_not_load(tmp_path):
    np.savez(tmp_path / "evil.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_arrays(tmp_path / "evil.npz")


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoints_holding_arbitrary_objects_do_not_load(tmp_path):
    torch.save({"state_dict": {}, "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="Weights only load failed"):
        load_checkpoint(tmp_path / "evil.pt")


def test_identical_arrays_give_byte_identical_files(tmp_path):
    """DVC then sees an unchanged output when a stage reruns to the same result."""
    import time

    save_arrays(tmp_path / "a.npz", x=np.arange(1000), y=np.ones((3, 4), dtype=np.uint8))
    time.sleep(2.1)  # zip timestamps have a two-second resolution
    save_arrays(tmp_path / "b.npz", x=np.arange(1000), y=np.ones((3, 4), dtype=np.uint8))
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_the_npz_bytes_are_the_same_on_every_python_and_numpy_version(tmp_path):
    """A plain zip with each member's size in its header. Measured the same on Python 3.10.13, 3.11.2,
    3.11.7, 3.12.1 and 3.13.0 with numpy 2.2-2.5; zipfile's streamed zip64 headers (what this wrote
    before) gave one md5 on 3.10.13 and 3.11.2 and another on 3.11.7 and later, for the same arrays."""
    import hashlib
    import zipfile

    save_arrays(tmp_path / "a.npz", x=np.arange(10, dtype=np.int64), names=np.array(["cat", "dog"]))
    with zipfile.ZipFile(tmp_path / "a.npz") as archive:
        assert [(i.filename, i.extract_version, i.date_time) for i in archive.infolist()] == [
            ("x.npy", 20, (1980, 1, 1, 0, 0, 0)), ("names.npy", 20, (1980, 1, 1, 0, 0, 0))]
    assert hashlib.md5((tmp_path / "a.npz").read_bytes()).hexdigest() == "e8d27b591f141647e4b4e98edf15a5a2"


def test_identical_weights_give_byte_identical_checkpoints(tmp_path):
    state = {"weight": torch.arange(6.0).reshape(2, 3), "epochs": 3}
    save_checkpoint(tmp_path / "a.pt", state)
    save_checkpoint(tmp_path / "b.pt", state)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
