"""Data: fixed disjoint splits, the derived digits-hard set, CIFAR and image-folder readers on tiny
fake folders, and one-line errors for bad paths."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from primesvt_optuna.data import load_splits, make_spec, subset
from primesvt_optuna.errors import PrimeSVTError


def _sources(splits) -> list[set[int]]:
    return [set(s.sources.tolist()) for s in (splits.train, splits.val, splits.test)]


def test_digits_split_fixed_disjoint_and_complete() -> None:
    a = load_splits(make_spec("digits", img_size=16, seed=0))
    b = load_splits(make_spec("digits", img_size=16, seed=0))
    assert a.sizes() == {"train": 1078, "val": 359, "test": 360}
    assert (a.num_classes, a.in_channels) == (10, 1)
    for x, y in zip(_sources(a), _sources(b)):
        assert x == y
    tr, va, te = _sources(a)
    assert not (tr & va or tr & te or va & te)
    assert len(tr | va | te) == 1797
    image, label = a.val[0]
    assert image.shape == (1, 16, 16) and image.dtype == torch.float32 and isinstance(label, int)
    assert torch.equal(a.test.images, b.test.images)
    other = load_splits(make_spec("digits", img_size=24, seed=1))
    assert _sources(other)[1] != va and other.val[0][0].shape == (1, 24, 24)


def test_digits_hard_is_seeded_disjoint_by_source_and_noisy() -> None:
    a = load_splits(make_spec("digits-hard", img_size=32, seed=0))
    b = load_splits(make_spec("digits-hard", img_size=32, seed=0))
    assert a.sizes() == {"train": 1796, "val": 1078, "test": 720}
    assert torch.equal(a.val.images, b.val.images)
    tr, va, te = _sources(a)
    assert not (tr & va or tr & te or va & te)
    clean = load_splits(make_spec("digits", img_size=32, seed=0))
    corner = (slice(None), 0, slice(0, 3), slice(0, 3))
    assert a.val.images[corner].mean() > 0.05 > clean.val.images[corner].mean()  # noisy background
    assert 0.0 <= float(a.val.images.min()) and float(a.val.images.max()) <= 1.0


def test_subset_is_fixed_seeded_and_bounded() -> None:
    val = load_splits(make_spec("digits", img_size=16)).val
    s1, s2, s3 = subset(val, 50, 0), subset(val, 50, 0), subset(val, 50, 1)
    assert len(s1) == 50 and s1.indices == s2.indices and s1.indices != s3.indices
    assert subset(val, 10_000, 0) is val and subset(val, None, 0) is val
    with pytest.raises(PrimeSVTError):
        subset(val, 0, 0)


def test_spec_validation() -> None:
    with pytest.raises(PrimeSVTError, match="unknown data set 'mnist'"):
        make_spec("mnist", img_size=16)
    with pytest.raises(PrimeSVTError, match="embedded"):
        make_spec("digits", path="/tmp", img_size=16)
    with pytest.raises(PrimeSVTError, match="needs a path"):
        make_spec("cifar10", img_size=32)


def _write_batch(path: Path, n: int, classes: int, key: bytes, rng: np.random.Generator) -> None:
    labels = np.arange(n) % classes
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    with open(path, "wb") as f:
        pickle.dump({b"data": data, key: labels.tolist(), b"batch_label": b"fake"}, f)


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> Path:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        _write_batch(root / f"data_batch_{i}", 20, 10, b"labels", rng)
    _write_batch(root / "test_batch", 40, 10, b"labels", rng)
    return root


def test_cifar10_reader(cifar10_dir: Path) -> None:
    splits = load_splits(make_spec("cifar10", path=str(cifar10_dir), img_size=32, seed=0))
    assert splits.sizes() == {"train": 100, "val": 20, "test": 20}
    assert (splits.num_classes, splits.in_channels) == (10, 3)
    x, y = splits.train[3]
    assert x.shape == (3, 32, 32) and y == 3
    assert abs(float(x.mean())) < 1.5  # normalised
    resized = load_splits(make_spec("cifar10", path=str(cifar10_dir), img_size=16, seed=0))
    assert resized.val[0][0].shape == (3, 16, 16)
    again = load_splits(make_spec("cifar10", path=str(cifar10_dir), img_size=32, seed=0))
    assert torch.equal(splits.val[5][0], again.val[5][0])


def test_cifar100_reader(tmp_path: Path) -> None:
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(1)
    _write_batch(root / "train", 300, 100, b"fine_labels", rng)
    _write_batch(root / "test", 200, 100, b"fine_labels", rng)
    splits = load_splits(make_spec("cifar100", path=str(root), img_size=32, seed=0))
    assert splits.num_classes == 100 and splits.sizes() == {"train": 300, "val": 100, "test": 100}
    assert sorted({splits.val[i][1] for i in range(100)}) == list(range(100))  # stratified halves


def _one_line_error(spec: dict, *needles: str) -> str:
    with pytest.raises(PrimeSVTError) as info:
        load_splits(spec)
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_cifar_bad_paths(tmp_path: Path, cifar10_dir: Path) -> None:
    missing = tmp_path / "nowhere"
    _one_line_error(make_spec("cifar10", path=str(missing), img_size=32), str(missing), "data_batch_1")
    (cifar10_dir / "data_batch_3").unlink()
    _one_line_error(make_spec("cifar10", path=str(cifar10_dir), img_size=32), "data_batch_3", "test_batch")
    (cifar10_dir / "data_batch_3").write_bytes(b"not a pickle")
    _one_line_error(make_spec("cifar10", path=str(cifar10_dir), img_size=32), "data_batch_3", "not a readable CIFAR batch")
    _one_line_error(make_spec("cifar100", path=str(cifar10_dir), img_size=32), "cifar-100-python/ with train and test")


def _write_images(folder: Path, classes: list[str], per_class: int, size: tuple[int, int]) -> None:
    from PIL import Image

    rng = np.random.default_rng(len(classes) * per_class)
    for c in classes:
        (folder / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / c / f"{i}.{'png' if i % 2 else 'jpg'}")


def test_image_folder_reader(tmp_path: Path) -> None:
    _write_images(tmp_path / "train", ["cat", "dog", "eel"], 3, (20, 12))
    _write_images(tmp_path / "val", ["cat", "dog", "eel"], 2, (9, 15))
    (tmp_path / "train" / "cat" / "notes.txt").write_text("ignored")
    splits = load_splits(make_spec("imagefolder", path=str(tmp_path), img_size=8, seed=0))
    assert splits.num_classes == 3 and splits.in_channels == 3
    assert splits.sizes() == {"train": 9, "val": 3, "test": 3}
    x, y = splits.train[0]
    assert x.shape == (3, 8, 8) and y == 0
    assert [splits.train[i][1] for i in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert sorted(splits.val.indices + splits.test.indices) == list(range(6))
    _write_images(tmp_path / "test", ["dog"], 2, (8, 8))  # with test/, the three folders are the splits
    splits = load_splits(make_spec("imagefolder", path=str(tmp_path), img_size=8, seed=0))
    assert splits.sizes() == {"train": 9, "val": 6, "test": 2} and splits.test[0][1] == 1


def test_image_folder_bad_layouts(tmp_path: Path) -> None:
    spec = make_spec("imagefolder", path=str(tmp_path / "none"), img_size=8)
    _one_line_error(spec, str(tmp_path / "none"), "ROOT/train/<class>/<image>")
    _write_images(tmp_path / "train", ["a", "b"], 1, (8, 8))
    spec = make_spec("imagefolder", path=str(tmp_path), img_size=8)
    _one_line_error(spec, str(tmp_path / "val"), "does not exist")
    _write_images(tmp_path / "val", ["a", "zebra"], 1, (8, 8))
    _one_line_error(spec, "zebra", "not in train/")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "train").mkdir()
    (tmp_path / "flat" / "train" / "img.jpg").write_bytes(b"")
    _one_line_error(make_spec("imagefolder", path=str(tmp_path / "flat"), img_size=8), "no class subfolders")


def test_image_folder_skips_hidden_folders_and_refuses_an_empty_class(tmp_path: Path) -> None:
    """A hidden folder (Jupyter's .ipynb_checkpoints) or an empty one in train/ used to become a
    class, shifting the label of every class sorted after it."""
    _write_images(tmp_path / "train", ["b", "c"], 2, (8, 8))
    _write_images(tmp_path / "val", ["b", "c"], 2, (8, 8))
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    splits = load_splits(make_spec("imagefolder", path=str(tmp_path), img_size=8, seed=0))
    assert splits.num_classes == 2 and [splits.train[i][1] for i in range(4)] == [0, 0, 1, 1]
    (tmp_path / "train" / "a_empty").mkdir()
    _one_line_error(make_spec("imagefolder", path=str(tmp_path), img_size=8), "a_empty", "has no images")


def test_cifar_refuses_bad_test_labels_and_too_few_images(tmp_path: Path, cifar10_dir: Path) -> None:
    rng = np.random.default_rng(2)
    with open(cifar10_dir / "test_batch", "wb") as f:  # one negative label, in the test batch only
        pickle.dump({b"data": rng.integers(0, 256, size=(4, 3072), dtype=np.uint8), b"labels": [0, 1, -1, 2]}, f)
    _one_line_error(make_spec("cifar10", path=str(cifar10_dir), img_size=32), "labels outside 0..9")
    _write_batch(cifar10_dir / "test_batch", 1, 10, b"labels", rng)
    _one_line_error(make_spec("cifar10", path=str(cifar10_dir), img_size=32), "at least 2")
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        _write_batch(cifar10_dir / name, 0, 10, b"labels", rng)
    _one_line_error(make_spec("cifar10", path=str(cifar10_dir), img_size=32), "0 training and 0 test images")


def test_a_negative_split_seed_is_one_line() -> None:
    with pytest.raises(PrimeSVTError, match=r"seed must be in 0\.\.2\*\*32-1, got -1"):
        make_spec("digits", img_size=16, seed=-1)


def test_data_that_does_not_fit_the_model_is_refused(tmp_path: Path) -> None:
    """A folder with another number of classes used to be evaluated silently (accuracy 0.25 on
    four classes for a three-class model, no warning)."""
    from primesvt_optuna.checkpoint import save_checkpoint
    from primesvt_optuna.data import check_fits
    from primesvt_optuna.models import build_model
    from primesvt_optuna.plugin import PruningObjective

    for root, classes in (("three", ["a", "b", "c"]), ("four", ["a", "b", "c", "d"])):
        _write_images(tmp_path / root / "train", classes, 2, (8, 8))
        _write_images(tmp_path / root / "val", classes, 2, (8, 8))
    config = {"preset": "digits-tiny", "num_classes": 3, "in_channels": 3}
    three = load_splits(make_spec("imagefolder", path=str(tmp_path / "three"), img_size=16))
    check_fits(three, config, "m.pt")
    with pytest.raises(PrimeSVTError, match="the data has 3 classes but m.pt was built for 10"):
        check_fits(three, {"preset": "digits-tiny", "in_channels": 3}, "m.pt")
    with pytest.raises(PrimeSVTError, match="the data has 3 input channels but m.pt was built for 1"):
        check_fits(three, {"preset": "digits-tiny", "num_classes": 3}, "m.pt")
    with pytest.raises(PrimeSVTError, match="the data has 16 pixels a side but m.pt was built for 32: set the "
                                            "data's img_size to 32"):
        check_fits(three, dict(config, img_size=32), "m.pt", img_size=16)
    ckpt = save_checkpoint(tmp_path / "m.pt", build_model(config), config,
                           make_spec("imagefolder", path=str(tmp_path / "three"), img_size=16), {})
    with pytest.raises(PrimeSVTError, match="the data has 4 classes but .*m.pt was built for 3"):
        PruningObjective(ckpt, data={"path": str(tmp_path / "four")}, memory_target=0.1, max_accuracy_drop=0.03)
    with pytest.raises(PrimeSVTError, match="the data has 24 pixels a side but .*m.pt was built for 16"):
        PruningObjective(ckpt, data={"img_size": 24}, memory_target=0.1, max_accuracy_drop=0.03)


class _RunsCode:
    """A pickle payload that would call ``os.system`` when loaded by an unrestricted unpickler."""

    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_cifar_batches_are_never_run_as_code(tmp_path: Path, cifar10_dir: Path, protocol: int,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=(20, 3072), dtype=np.uint8)
    with open(cifar10_dir / "data_batch_2", "wb") as f:  # a well-formed batch at every protocol still loads
        pickle.dump({b"data": data, b"labels": list(range(10)) * 2, b"filenames": [b"a.png"] * 20}, f, protocol=protocol)
    assert load_splits(make_spec("cifar10", path=str(cifar10_dir), img_size=32)).sizes()["train"] == 100
    monkeypatch.chdir(tmp_path)
    with open(cifar10_dir / "data_batch_4", "wb") as f:
        pickle.dump({b"data": _RunsCode(), b"labels": [0]}, f, protocol=protocol)
    with pytest.raises(PrimeSVTError) as info:
        load_splits(make_spec("cifar10", path=str(cifar10_dir), img_size=32))
    message = str(info.value)
    assert "\n" not in message and "data_batch_4" in message and "refusing to unpickle" in message
    assert "system" in message  # names what it refused (posix.system or nt.system)
    assert not (tmp_path / "PWNED").exists()
