"""`primesvt dashboard` serves a finished PrimeSVT study on loopback, and a real headless Chromium
renders it: the study, its trials, the objective names and the constraint attributes appear in the
page the JavaScript app builds (optuna-dashboard 0.21 shows constraints only through the user
attributes the objective writes)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from primesvt_optuna.plugin import PrioritizedSampler, SyntheticObjective
from primesvt_optuna.storage import open_storage

STUDY = "dash/prioritized/seed0"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--virtual-time-budget=20000",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{folder}/study.db"
    objective = SyntheticObjective({"fc1": 4000, "fc2": 3000, "proj": 500}, memory_target=0.3, grid=(0.3, 0.6),
                                   n_images=200, batch_size=50)
    study = optuna.create_study(storage=open_storage(url), study_name=STUDY, directions=objective.directions,
                                sampler=PrioritizedSampler(grid=objective.grid))
    study.optimize(objective)
    proc = subprocess.Popen([sys.executable, "-m", "primesvt_optuna.cli", "dashboard", url, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # blocks until the address is printed (or the process dies)
        match = re.search(r"http://127\.0\.0\.1:(\d+)/dashboard/", line)
        assert match, f"no address printed: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        base = match.group(0).removesuffix("dashboard/")
        summaries = json.load(urllib.request.urlopen(base + "api/studies", timeout=30))["study_summaries"]
        study_id = next(s["study_id"] for s in summaries if s["study_name"] == STUDY)
        yield base, study_id, len(study.trials)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_listens_on_loopback_only(server):
    base, _, _ = server
    assert base.startswith("http://127.0.0.1:")


def test_json_api_serves_trials_objectives_and_constraints(server):
    base, study_id, n_trials = server
    data = json.load(urllib.request.urlopen(f"{base}api/studies/{study_id}", timeout=30))
    assert data["objective_names"] == ["accuracy", "model_bytes"]
    assert len(data["trials"]) == n_trials
    keys = {a["key"] for t in data["trials"] for a in t["user_attrs"]}
    assert {"constraint_accuracy", "constraint_memory", "feasible", "phase", "memory_saving",
            "images_evaluated"} <= keys


def _render(chromium: str, url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
                          capture_output=True, text=True, timeout=180)


@pytest.mark.browser
def test_chromium_renders_the_study(server, chromium, tmp_path):
    base, study_id, n_trials = server
    page = f"{base}dashboard/studies/{study_id}/trials"
    dom = ""
    for _ in range(3):  # the app fetches the study after the first paint: retry if it was too slow
        done = _render(chromium, page, tmp_path / f"profile{_}", "--dump-dom")
        dom = done.stdout
        if STUDY in dom and "constraint_accuracy" in dom:
            break
        time.sleep(2)
    assert STUDY in dom, dom[-2000:]
    assert f"Trial {n_trials - 1}" in dom  # the trial list is rendered
    for name in ("accuracy", "model_bytes", "constraint_accuracy", "constraint_memory", "feasible"):
        assert name in dom, name
    shot = tmp_path / "dashboard.png"
    _render(chromium, f"{base}dashboard/studies/{study_id}", tmp_path / "profile-shot", f"--screenshot={shot}",
            "--window-size=1400,900")
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_port_is_one_line(tmp_path, capsys):
    from primesvt_optuna.cli import main

    optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db")
    assert main(["dashboard", f"sqlite:///{tmp_path}/s.db", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err

