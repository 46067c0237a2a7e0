"""`primesvt dashboard` serves finished PrimeSVT studies on loopback, read-only, and a real headless
Chromium renders them: the study, its trials, the objective names and the constraint attributes
appear in the page the JavaScript app builds, and the trials it marks "Best Trial" (the chips of
the trial list and the Pareto-front plot) are exactly Optuna's ``study.best_trials``, although
optuna-dashboard 0.21 does not read Optuna 5's ``set_constraint`` values (issue 14). The study in
storage is never written to."""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from primesvt_optuna.plugin import PrioritizedSampler, SyntheticObjective
from primesvt_optuna.reporting.dashboard import (
    READ_ONLY_REASON,
    DashboardStorage,
    ReadOnlyStorageError,
    dashboard_constraints,
    optuna_best_trials,
)
from primesvt_optuna.storage import open_storage

STUDY = "dash/prioritized/seed0"
CONSTRAINED = "dash/constrained"
SINGLE = "dash/single"
NO_FEASIBLE = "dash/no-feasible"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]

FLOOR = 0.95
# (accuracy, model_bytes, memory constraint) of the hand-made study: accuracy >= FLOOR and memory <= 0
# are feasible. Trials 3, 4 (accuracy below the floor) and 6 (memory) are infeasible and not
# dominated; 6 dominates the feasible 0, 1 and 5, so the unconstrained front optuna-dashboard
# computes ([2, 3, 4, 6]) and Optuna's feasible one ([0, 1, 2]) share only trial 2.
ROWS = [(0.97, 100, -0.1), (0.96, 80, -0.1), (0.955, 60, -0.1), (0.94, 40, -0.1), (0.93, 30, -0.1),
        (0.96, 90, -0.1), (0.99, 70, 0.2)]
PRUNED, FAILED = len(ROWS), len(ROWS) + 1  # a cut trial (infinite accuracy constraint) and a failed one
CONSTRAINED_BEST = [0, 1, 2]


def _row_objective(trial: optuna.Trial) -> tuple[float, float] | float:
    i = trial.suggest_int("row", 0, FAILED)
    if i == PRUNED:
        trial.set_constraint("accuracy", math.inf)
        raise optuna.TrialPruned("cut")
    if i == FAILED:
        raise RuntimeError("failed on purpose")
    accuracy, model_bytes, memory = ROWS[i]
    trial.set_constraint("memory", memory)  # set before accuracy: the view orders by key, not by time
    trial.set_constraint("accuracy", round(FLOOR - accuracy, 12))
    trial.set_user_attr("accuracy", accuracy)
    return accuracy if len(trial.study.directions) == 1 else (accuracy, model_bytes)


def _row_study(storage: Any, name: str, rows: list[int], directions: list[str]) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name=name, directions=directions)
    for i in rows:
        study.enqueue_trial({"row": i})
    study.optimize(_row_objective, n_trials=len(rows), catch=(RuntimeError,))
    return study


def _constrained_study(storage: Any, name: str = CONSTRAINED) -> optuna.Study:
    return _row_study(storage, name, list(range(FAILED + 1)), ["maximize", "minimize"])


def _stored(url: str) -> dict[str, Any]:
    """Everything a write through the dashboard could change: per study its attributes and its
    trials' states, values, attributes and notes."""
    storage = open_storage(url, read_only=True)
    return {
        s.study_name: (s.user_attrs, s.system_attrs, [
            (t.number, t.state, t.values, t.user_attrs, t.system_attrs)
            for t in storage.get_all_trials(s._study_id)
        ])
        for s in storage.get_all_studies()
    }


@dataclass
class Served:
    base: str
    url: str
    ids: dict[str, int]
    best: dict[str, list[int]]
    trials: dict[str, list[optuna.trial.FrozenTrial]]
    stored: dict[str, Any] = field(repr=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{folder}/study.db"
    storage = open_storage(url)
    objective = SyntheticObjective({"fc1": 4000, "fc2": 3000, "proj": 500}, memory_target=0.3, grid=(0.3, 0.6),
                                   n_images=200, batch_size=50)
    synthetic = optuna.create_study(storage=storage, study_name=STUDY, directions=objective.directions,
                                    sampler=PrioritizedSampler(grid=objective.grid))
    synthetic.optimize(objective)
    studies = [
        synthetic,
        _constrained_study(storage),
        # One objective: the best value (trial 6, 0.99) is infeasible, Optuna's best is trial 0 (0.97).
        _row_study(storage, SINGLE, [0, 1, 2, 3, 4, 5, 6], ["maximize"]),
        _row_study(storage, NO_FEASIBLE, [3, 4, 6, PRUNED], ["maximize", "minimize"]),
    ]
    best = {s.study_name: [t.number for t in s.best_trials] for s in studies}
    assert best[CONSTRAINED] == CONSTRAINED_BEST and best[SINGLE] == [0] and best[NO_FEASIBLE] == []
    stored = _stored(url)
    proc = subprocess.Popen([sys.executable, "-m", "primesvt_optuna.cli", "dashboard", url, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # blocks until the address is printed (or the process dies)
        match = re.search(r"http://127\.0\.0\.1:(\d+)/dashboard/", line)
        assert match, f"no address printed: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        base = match.group(0).removesuffix("dashboard/")
        summaries = json.load(urllib.request.urlopen(base + "api/studies", timeout=30))["study_summaries"]
        ids = {s["study_name"]: s["study_id"] for s in summaries}
        yield Served(base, url, ids, best, {s.study_name: s.trials for s in studies}, stored)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _get(url: str) -> dict[str, Any]:
    return json.load(urllib.request.urlopen(url, timeout=30))


def test_listens_on_loopback_only(server):
    assert server.base.startswith("http://127.0.0.1:")


def test_json_api_serves_trials_objectives_and_constraints(server):
    data = _get(f"{server.base}api/studies/{server.ids[STUDY]}")
    assert data["objective_names"] == ["accuracy", "model_bytes"]
    assert len(data["trials"]) == len(server.trials[STUDY])
    keys = {a["key"] for t in data["trials"] for a in t["user_attrs"]}
    assert {"constraint_accuracy", "constraint_memory", "feasible", "phase", "memory_saving",
            "images_evaluated"} <= keys


def test_json_api_best_trials_are_optunas(server):
    """The study detail's ``best_trials`` are Optuna's (feasible) best trials, for two objectives,
    one objective and none feasible, also in the incremental form the page polls (``after``), and
    every trial carries its constraints in the list form the page reads."""
    from optuna_dashboard._pareto_front import get_pareto_front_trials

    trials = server.trials[CONSTRAINED]
    unconstrained = [t.number for t in get_pareto_front_trials(trials, [optuna.study.StudyDirection.MAXIMIZE,
                                                                         optuna.study.StudyDirection.MINIMIZE])]
    assert unconstrained == [2, 3, 4, 6]  # what optuna-dashboard alone marks best: the study tests the fix
    for name in (STUDY, CONSTRAINED, SINGLE, NO_FEASIBLE):
        for after in (0, len(server.trials[name]) - 2):
            data = _get(f"{server.base}api/studies/{server.ids[name]}?after={after}")
            assert [t["number"] for t in data["best_trials"]] == server.best[name], (name, after)
            for sent, trial in zip(data["trials"], server.trials[name][after:], strict=True):
                feasible = all(v <= 0 for v in sent["constraints"])  # how the page decides
                assert feasible == all(v <= 0 for v in trial.constraints.values()), (name, trial.number)
    data = _get(f"{server.base}api/studies/{server.ids[CONSTRAINED]}")
    sent = {t["number"]: t["constraints"] for t in data["trials"]}
    assert sent[1] == [pytest.approx(-0.01), -0.1]  # [accuracy, memory]: sorted by key
    assert sent[6] == [pytest.approx(-0.04), 0.2]
    assert sent[PRUNED] == [sys.float_info.max]  # infinity, which JSON cannot carry, keeps its sign
    assert sent[FAILED] == []


@pytest.mark.parametrize(("method", "path", "body"), [
    ("DELETE", "api/studies/{id}", None),
    ("PUT", "api/studies/{id}/note", {"version": 1, "body": "edited"}),
    ("POST", "api/studies/{id}/rename", {"study_name": "renamed"}),
    ("POST", "api/trials/{trial_id}/tell", {"state": "Fail"}),
    ("POST", "api/trials/{trial_id}/user-attrs", {"user_attrs": {"x": 1}}),
    ("POST", "api/studies", {"study_name": "new", "directions": ["minimize"]}),
])
def test_changing_requests_are_refused(server, method, path, body):
    trial_id = server.trials[CONSTRAINED][0]._trial_id
    url = server.base + path.format(id=server.ids[CONSTRAINED], trial_id=trial_id)
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 403
    assert json.load(refused.value)["reason"] == READ_ONLY_REASON
    assert _stored(server.url) == server.stored


class _DevTools:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
    JSON messages ending in NUL, commands on fd 3, answers on fd 4), so a test can read what the
    page's JavaScript built without a WebDriver."""

    def __init__(self, chromium: str, profile: Path) -> None:
        cmd_read, self._cmd = os.pipe()
        self._out, out_write = os.pipe()

        def child_fds() -> None:  # Chromium reads fd 3 and writes fd 4
            a, b = os.dup(cmd_read), os.dup(out_write)  # dup first: the pipe may itself sit on 3 or 4
            os.dup2(a, 3)
            os.dup2(b, 4)

        self._proc = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            preexec_fn=child_fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(cmd_read)
        os.close(out_write)
        self._buffer = b""
        self._id = 0

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._cmd, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._out, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"chromium closed the DevTools pipe (exit {self._proc.poll()})")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._id:  # events and other answers are skipped
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    @contextlib.contextmanager
    def tab(self, url: str, width: int = 1400, height: int = 900) -> Iterator[str]:
        """A new tab (its DevTools session id) showing ``url``; closed afterwards."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        try:
            session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            self.call("Emulation.setDeviceMetricsOverride", session, width=width, height=height,
                      deviceScaleFactor=1, mobile=False)
            self.call("Page.navigate", session, url=url)
            yield session
        finally:
            self.call("Target.closeTarget", targetId=target)

    def wait_for(self, session: str, expression: str, timeout: float = 240) -> Any:
        """Evaluate ``expression`` in the tab until it is neither null nor false (the app fetches
        the study after its first paint)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.call("Runtime.evaluate", session, expression=expression,
                                  returnByValue=True)["result"].get("value")
            except RuntimeError:  # no execution context yet: the page is still loading
                value = None
            if value is not None and value is not False:
                return value
            time.sleep(0.25)
        text = self.call("Runtime.evaluate", session, expression="document.body && document.body.innerText",
                         returnByValue=True)["result"].get("value")
        raise AssertionError(f"nothing after {timeout} s; the page shows: {str(text)[:2000]}")

    def screenshot(self, session: str) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", session, format="png")["data"])

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=30)
        os.close(self._cmd)
        os.close(self._out)


# The trial list: "Trial N" items, with a "Best Trial" chip on the best ones (from best_trials).
TRIAL_LIST_JS = """(() => {
  const items = [...document.querySelectorAll('li')].filter(e => /^Trial \\d+\\n/.test(e.innerText));
  if (items.length < %d) return null;
  return items.map(e => [Number(e.innerText.match(/^Trial (\\d+)/)[1]), e.innerText.includes('Best Trial')]);
})()"""
# The Pareto-front plot: its traces, named by their hover template (Best Trial, Feasible Trial,
# Infeasible Trial, ...), each point's text being the trial as JSON (number, values, params).
PARETO_JS = """(() => {
  const plot = document.getElementById('graph-pareto-front');
  if (!plot || !plot.data || !plot.data.length) return null;
  return plot.data.map(t => [(t.hovertemplate.match(/<extra>(.*)<\\/extra>/) || [])[1],
                             (t.text || []).map(s => JSON.parse(s.replace(/<br>/g, '\\n')).number)]);
})()"""


@pytest.fixture(scope="module")
def browser(chromium, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_DevTools]:
    devtools = _DevTools(chromium, tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield devtools
    finally:
        devtools.close()


@pytest.mark.browser
def test_chromium_renders_the_study(server, browser, tmp_path):
    study_id, n_trials = server.ids[STUDY], len(server.trials[STUDY])
    with browser.tab(f"{server.base}dashboard/studies/{study_id}/trials") as tab:
        dom = browser.wait_for(tab, f"""(() => {{ const html = document.documentElement.outerHTML;
            return html.includes({json.dumps(STUDY)}) && html.includes('constraint_accuracy') ? html : null; }})()""")
    assert f"Trial {n_trials - 1}" in dom  # the trial list is rendered
    for name in ("accuracy", "model_bytes", "constraint_accuracy", "constraint_memory", "feasible"):
        assert name in dom, name
    with browser.tab(f"{server.base}dashboard/studies/{study_id}") as tab:
        browser.wait_for(tab, PARETO_JS)  # the plots are drawn
        shot = browser.screenshot(tab)
    (tmp_path / "dashboard.png").write_bytes(shot)
    assert len(shot) > 10_000 and shot[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.browser
def test_chromium_marks_exactly_optunas_best_trials(server, browser):
    """The real page, on the hand-made study (feasible and infeasible non-dominated trials, a
    feasible one dominated only by an infeasible one, an infinite constraint) and on the synthetic
    PrimeSVT study: the trial list's "Best Trial" chips and the Pareto-front plot's "Best Trial"
    points are exactly ``study.best_trials``; the plot's infeasible points are Optuna's."""
    for name in (CONSTRAINED, STUDY):
        trials, page = server.trials[name], f"{server.base}dashboard/studies/{server.ids[name]}"
        with browser.tab(f"{page}/trials") as tab:
            items = browser.wait_for(tab, TRIAL_LIST_JS % len(trials))
        assert [n for n, best in items if best] == server.best[name], (name, items)
        assert sorted(n for n, _ in items) == [t.number for t in trials]

        with browser.tab(page) as tab:
            traces = dict(browser.wait_for(tab, PARETO_JS))
        assert sorted(traces["Best Trial"]) == server.best[name], (name, traces)
        infeasible = [t.number for t in trials if t.state == TrialState.COMPLETE
                      and any(v > 0 for v in t.constraints.values())]
        assert sorted(traces["Infeasible Trial"]) == infeasible, (name, traces)
    assert _stored(server.url) == server.stored


def test_study_in_storage_was_not_written(server):
    """After every request above: the stored study is as it was, and no trial holds the legacy
    ``constraints`` list (Optuna 5 would count each constraint twice)."""
    assert _stored(server.url) == server.stored
    storage = open_storage(server.url, read_only=True)
    for study in storage.get_all_studies():
        for trial in storage.get_all_trials(study._study_id):
            assert "constraints" not in trial.system_attrs, (study.study_name, trial.number)


def test_view_over_each_storage(storage_url):
    """DashboardStorage over SQLite, a journal and PostgreSQL, directly and behind Optuna's
    _CachedStorage: constraints as the dashboard's list, every get_all_trials argument honoured,
    Optuna's best trials, writes refused, the real storage's trials untouched."""
    storage = open_storage(storage_url)
    name = f"dash-view-{uuid.uuid4().hex[:8]}"  # PostgreSQL is shared by the tests
    study = _constrained_study(storage, name)
    try:
        _check_view(storage, study)
    finally:
        if storage_url.startswith("postgresql"):
            optuna.delete_study(study_name=name, storage=storage)


def _check_view(storage: Any, study: optuna.Study) -> None:
    sid, expected = study._study_id, {t.number: t.constraints for t in study.trials}
    for backing in (storage, optuna.storages.get_storage(storage)):
        view = DashboardStorage(backing)
        for deepcopy in (False, True):
            trials = view.get_all_trials(sid, deepcopy=deepcopy)
            assert [t.number for t in trials] == list(range(FAILED + 1))
            for t in trials:
                assert t.system_attrs.get("constraints") == dashboard_constraints(
                    {f"constraints:{k}": v for k, v in expected[t.number].items()})
                assert not any(k.startswith("constraints:") for k in t.system_attrs)
        assert [t.number for t in view.get_all_trials(sid, states=(TrialState.PRUNED,))] == [PRUNED]
        trial_id = study.trials[6]._trial_id
        assert view.get_trial(trial_id).system_attrs["constraints"] == [pytest.approx(-0.04), 0.2]
        assert view.get_trial_system_attrs(trial_id)["constraints"] == [pytest.approx(-0.04), 0.2]
        assert view.get_trial(trial_id).constraints == {"0": pytest.approx(-0.04), "1": 0.2}  # each once
        assert [t.number for t in optuna_best_trials(view, sid)] == CONSTRAINED_BEST
        ids = [s._study_id for s in view.get_all_studies()]
        assert sid in ids and ids == sorted(ids)
        assert DashboardStorage(view).storage is backing
        with pytest.raises(ReadOnlyStorageError, match="read-only"):
            view.set_study_system_attr(sid, "dashboard:note", "x")
        with pytest.raises(ReadOnlyStorageError):
            view.set_trial_state_values(trial_id, TrialState.FAIL)
        with pytest.raises(ReadOnlyStorageError):
            view.delete_study(sid)
        with pytest.raises(ReadOnlyStorageError):
            view.create_new_trial(sid)
        for t in backing.get_all_trials(sid, deepcopy=False):
            assert "constraints" not in t.system_attrs and t.constraints == expected[t.number]
    assert len(optuna.load_study(study_name=study.study_name, storage=storage).trials) == FAILED + 1


def test_view_leaves_cached_trials_alone_and_reads_legacy_lists():
    """An in-memory storage hands out its own trial objects for deepcopy=False: the view copies
    the trials it changes. A legacy ``constraints`` list comes first; trials without constraints
    are passed as they are."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, directions=["minimize", "minimize"])
    legacy = optuna.trial.create_trial(values=[1, 1], system_attrs={"constraints": [0.5]})
    legacy.set_constraint("b", -1.0)
    study.add_trial(legacy)
    study.add_trial(optuna.trial.create_trial(values=[2, 0], constraints={"z": -1.0, "a": -math.inf}))
    study.add_trial(optuna.trial.create_trial(values=[0, 2]))
    inner = storage.get_all_trials(study._study_id, deepcopy=False)
    view = DashboardStorage(storage).get_all_trials(study._study_id, deepcopy=False)
    assert [t.system_attrs.get("constraints") for t in view] == [[0.5, -1.0], [-sys.float_info.max, -1.0], None]
    assert view[2] is inner[2]
    assert inner[0].system_attrs == {"constraints": [0.5], "constraints:b": -1.0}
    assert inner[1].system_attrs == {"constraints:z": -1.0, "constraints:a": -math.inf}
    assert [t.number for t in optuna_best_trials(storage, study._study_id)] == [1, 2]


def test_bad_port_is_one_line(tmp_path, capsys):
    from primesvt_optuna.cli import main

    optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db")
    assert main(["dashboard", f"sqlite:///{tmp_path}/s.db", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
