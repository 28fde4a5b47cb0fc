"""Reading and writing artifacts safely.

Every write goes to a temporary file in the target folder and is renamed into
place, so a crash never leaves half an artifact. Files get the mode a plain write
would give them (0666 less the umask, usually 0644), not the temporary file's 0600,
so a shared results folder stays readable. Arrays load with
allow_pickle=False and checkpoints with weights_only=True: nothing on disk can
run code when it is read. torch is imported only where a checkpoint is read or written,
so that what only reads results (the report, `backdoorlab.parallel`) starts without it.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.fchmod(fd, 0o666 & ~current_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_arrays(path: str | Path, **arrays: np.ndarray) -> None:
    """An .npz file that np.load reads; byte-identical for identical arrays, so DVC sees an unchanged
    output when a stage reruns to the same result. No zip timestamps, and each member is written whole
    with its size known: zipfile's streamed zip64 headers differ between Python patch releases (3.11.2
    and 3.11.7 wrote different bytes for the same arrays), the plain ones do not."""
    with atomic_path(path, suffix=".npz") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for name, value in arrays.items():
            value = np.asarray(value)
            if value.dtype == object:
                raise TypeError(f"{name}: object arrays cannot be stored without pickle")
            member = io.BytesIO()
            np.lib.format.write_array(member, value, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o600 << 16
            archive.writestr(info, member.getvalue())


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def save_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def load_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """`state` holds tensors, numbers, strings and lists only, so it reloads with weights_only=True.

    Serialised in memory first: torch.save names the archive's root folder after the file it writes,
    which would be the random temporary name, so the same weights would give different bytes (and
    DVC would see a changed output on every rerun).
    """
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def save_figure(path: str | Path, figure) -> None:
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        figure.savefig(tmp, dpi=110, bbox_inches="tight")
