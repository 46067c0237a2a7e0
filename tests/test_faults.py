"""Bad input and faults, tried on purpose: each gives one clear line and a nonzero exit, and no
existing study, checkpoint or export is changed. Faults are injected with mechanisms root cannot
bypass (tests run as root, which ignores file permissions): a SQLite ``?mode=ro`` URI, a closed
port, RLIMIT_FSIZE, a small tmpfs, an injected ENOSPC.

The command line runs in this process (``primesvt_optuna.cli.main``) except where a resource
limit needs a subprocess. The one real search (shipped digits baseline, uniform policy, 30
validation images: a reference and one pruned trial) is made once per module.
"""

from __future__ import annotations

import errno
import hashlib
import os
import resource
import socket
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

from primesvt_optuna import cli
from primesvt_optuna.checkpoint import load_checkpoint, save_checkpoint, shipped
from primesvt_optuna.errors import PrimeSVTError
from primesvt_optuna.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)

GOOD = """\
study_name = "faults"
storage = "sqlite:///{db}"
checkpoint = "{checkpoint}"
[data]
eval_images = 30
[constraints]
max_accuracy_drop = 0.5
memory_target = 0.1
accept = "point"
[search]
policy = "uniform"
grid = [0.2]
"""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _study_state(url: str) -> list[Any]:
    """Everything a bad command must leave as it was: studies, their settings and trials."""
    storage = open_storage(url, read_only=True)
    state = []
    for name in sorted(optuna.get_all_study_names(storage)):
        study = optuna.load_study(study_name=name, storage=storage)
        state.append((name, study.user_attrs, [(t.number, t.state, t.params, t.user_attrs) for t in study.trials]))
    return state


def _fails_with_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    code = cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code != 0, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished search and its export: the things a bad command must not touch."""
    root = tmp_path_factory.mktemp("faults")
    db = root / "study.db"
    config = root / "study.toml"
    config.write_text(GOOD.format(db=db, checkpoint="digits-2-64"))
    assert cli.main(["search", str(config), "--json"]) == 0
    export = root / "pruned.pt"
    _save(export)  # stands for an earlier export: any valid checkpoint the next export would replace
    return {"root": root, "db": db, "config": config, "export": export}


@pytest.fixture
def bad_config(tmp_path: Path):
    """Write a config into tmp_path; the study it names lives in tmp_path too."""

    def write(text: str) -> Path:
        path = tmp_path / "bad.toml"
        path.write_text(text)
        return path

    return write


def _good(tmp_path: Path) -> str:
    return GOOD.format(db=tmp_path / "new.db", checkpoint="digits-2-64")


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (lambda t: t.replace('policy = "uniform"', 'policy = "uniform'), ["malformed TOML"]),
        (lambda t: t + "colour = 3\n", ["unknown key", "colour"]),
        (lambda t: t.replace("[search]", "[search]\nwalk_everything = true"), ["unknown key", "walk_everything"]),
        (lambda t: t.replace("grid = [0.2]", "grid = [0.2, 1.0]"), ["grid", "1.0"]),
        (lambda t: t.replace("grid = [0.2]", "grid = [-0.1, 0.2]"), ["grid", "-0.1"]),
        (lambda t: t.replace("max_accuracy_drop = 0.5", "max_accuracy_drop = -0.01"), ["max_accuracy_drop"]),
        (lambda t: t.replace("memory_target = 0.1", "memory_target = 1.0"), ["memory_target"]),
    ],
    ids=["malformed-toml", "unknown-top-key", "unknown-search-key", "grid-1", "grid-negative",
         "negative-budget", "memory-target-1"],
)
def test_bad_config(tmp_path: Path, bad_config, capsys, edit, needles) -> None:
    path = bad_config(edit(_good(tmp_path)))
    _fails_with_one_line(capsys, ["search", str(path)], *needles)
    assert not (tmp_path / "new.db").exists(), "a refused config created a storage"


def test_missing_config(tmp_path: Path, capsys) -> None:
    _fails_with_one_line(capsys, ["search", str(tmp_path / "none.toml")], "does not exist")


def _checkpoint_variant(tmp_path: Path, kind: str) -> Path:
    source = shipped("digits-2-64")
    path = tmp_path / f"{kind}.pt"
    if kind == "truncated":
        data = source.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "other-architecture":
        ckpt = torch.load(source, map_location="cpu", weights_only=False)
        ckpt["model_config"] = {**ckpt["model_config"], "embed_dim": 2 * ckpt["model_config"].get("embed_dim", 64)}
        torch.save(ckpt, path)
    return path


@pytest.mark.parametrize(("kind", "needle"), [("missing", "does not exist"), ("truncated", ""), ("other-architecture", "")])
def test_bad_checkpoint(tmp_path: Path, searched, bad_config, capsys, kind: str, needle: str) -> None:
    path = _checkpoint_variant(tmp_path, kind)
    url = f"sqlite:///{searched['db']}"
    before = _study_state(url)
    config = bad_config(GOOD.format(db=searched["db"], checkpoint=path).replace('"faults"', f'"other-{kind}"'))
    line = _fails_with_one_line(capsys, ["search", str(config)], needle, path.name)
    assert "Traceback" not in line
    assert _study_state(url) == before


def test_checkpoint_of_another_architecture_loads_with_a_clear_error(tmp_path: Path) -> None:
    path = _checkpoint_variant(tmp_path, "other-architecture")
    with pytest.raises(PrimeSVTError) as exc:
        load_checkpoint(path)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("layout", ["missing", "wrong-layout"])
def test_bad_data_path(tmp_path: Path, bad_config, capsys, layout: str) -> None:
    data = tmp_path / "cifar"
    if layout == "wrong-layout":
        data.mkdir()
        (data / "readme.txt").write_text("not CIFAR batches")
    config = bad_config(_good(tmp_path).replace("[data]", f'[data]\nname = "cifar10"\npath = "{data}"'))
    _fails_with_one_line(capsys, ["search", str(config)], str(data))
    assert not (tmp_path / "new.db").exists() or _study_state(f"sqlite:///{tmp_path}/new.db") == []


def test_existing_study_with_other_settings(searched, capsys) -> None:
    url = f"sqlite:///{searched['db']}"
    before = _study_state(url)
    argv = ["search", str(searched["config"]), "--resume", "--max-accuracy-drop", "0.01"]
    _fails_with_one_line(capsys, argv, "faults", "max_accuracy_drop")
    _fails_with_one_line(capsys, ["search", str(searched["config"])], "already exists", "--resume")
    assert _study_state(url) == before


def test_unreachable_storage(searched, capsys) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://primesvt:s3cret@127.0.0.1:{port}/x"
    line = _fails_with_one_line(capsys, ["search", str(searched["config"]), "--storage", url], "cannot reach", str(port))
    assert "s3cret" not in line


def _content(db: Path) -> str:
    """The database's rows, read-only: the file's bytes may change whenever SQLite folds the
    write-ahead log of an earlier test's connection back into it, its content may not."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return "\n".join(connection.iterdump())
    finally:
        connection.close()


def test_read_only_storage(searched, capsys) -> None:
    url = f"sqlite:///file:{searched['db']}?mode=ro&uri=true"
    before = _content(searched["db"])
    for argv in (["search", str(searched["config"]), "--storage", url, "--resume"],
                 ["search", str(searched["config"]), "--storage", url, "--study-name", "new-one"]):
        _fails_with_one_line(capsys, argv, "read-only")
    assert _content(searched["db"]) == before


@pytest.mark.slow
def test_export_to_a_full_disk_keeps_the_old_export(searched) -> None:
    """RLIMIT_FSIZE (root cannot exceed it): the write fails with EFBIG, the old export stays whole."""
    export = searched["export"]
    before = _sha(export)
    limit = export.stat().st_size // 4

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        [sys.executable, "-m", "primesvt_optuna.cli", "export", f"sqlite:///{searched['db']}",
         "--study-name", "faults", "--output", str(export), "--force", "--accept", "point"],
        preexec_fn=limit_file_size, capture_output=True, text=True, timeout=600,
    )
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert done.returncode != 0
    assert lines and lines[-1].startswith("error: ") and "cannot write" in lines[-1], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert _sha(export) == before
    assert sorted(p.name for p in export.parent.iterdir() if p.name.startswith(f".{export.name}")) == []


def _save(path: Path, force: bool = True) -> None:
    model, ckpt = load_checkpoint(shipped("digits-2-64"))
    save_checkpoint(path, model, ckpt["model_config"], ckpt["data"], ckpt["metrics"], force=force)


def test_injected_enospc_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "model.pt"
    _save(path)
    before = _sha(path)

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError) as exc:
        _save(path)
    assert exc.value.errno == errno.ENOSPC
    assert _sha(path) == before and [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_small_tmpfs_full(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN); RLIMIT_FSIZE covers the case")
    try:
        path = mount / "model.pt"
        path.write_bytes(b"old export")
        (mount / "filler").write_bytes(b"\0" * (1024 * 1024 - 300 * 1024))  # leaves less than a checkpoint
        with pytest.raises(OSError) as exc:
            _save(path)
        assert exc.value.errno == errno.ENOSPC
        assert path.read_bytes() == b"old export"
        assert sorted(p.name for p in mount.iterdir()) == ["filler", "model.pt"]
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


# ----- trials whose evaluation raises or yields NaN -----------------------------------------------


def test_raising_and_nan_trials_fail_with_reason_and_reject_the_rate(tmp_path: Path) -> None:
    from primesvt_optuna.plugin import PrioritizedSampler, SyntheticObjective
    from primesvt_optuna.workers import optimize

    sizes = {"fc1": 4000, "fc2": 4000, "qkv": 1500}
    objective = SyntheticObjective(
        sizes, sensitivity={"fc1": 0.05, "fc2": 0.2, "qkv": 0.1}, max_accuracy_drop=0.03,
        grid=(0.2, 0.4, 0.6, 0.8), fail=[("fc1", 0.6)], nan=[("qkv", 0.2)], holdout=0.5,
    )
    sampler = PrioritizedSampler(grid=(0.2, 0.4, 0.6, 0.8))
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/s.db"), sampler=sampler,
                                directions=objective.directions, study_name=f"nan-{uuid.uuid4().hex[:6]}")
    report = optimize(study, objective)
    assert not report.interrupted
    failed = {t.user_attrs.get("layer"): t for t in study.trials if t.state == TrialState.FAIL}
    assert "synthetic failure" in failed["fc1"].user_attrs["fail_reason"]
    assert "nan" in failed["qkv"].user_attrs["fail_reason"].lower()
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    state = sampler.walk_state(study)
    assert state.done
    committed = dict(state.commits and [(c.layer, c.rate) for c in state.commits])
    # fc1 alone passes at 0.6 without the injected failure; with it, its bound drops to 0.4
    assert state.bounds["rate:fc1"] == 0.4 and committed["rate:fc1"] == 0.4
    assert "rate:qkv" in state.bounds and committed.get("rate:qkv", 0.0) != 0.2
