"""optuna-dashboard on loopback, read-only, showing as best exactly what Optuna calls best.

The server is optuna-dashboard's own WSGI app (``optuna_dashboard.wsgi``) behind a threading
``wsgiref`` server bound to 127.0.0.1 only. Port 0 picks a free port; the address printed is the
real one.

optuna-dashboard 0.21 predates Optuna 5's ``trial.set_constraint(key, value)``, which stores one
system attribute ``constraints:<key>`` per constraint: the dashboard reads only the legacy list in
``system_attrs["constraints"]``, so every trial looks feasible to it. Its page then colours
infeasible trials as "Best Trial" in the Pareto-front plot (computed in the browser from each
trial's ``constraints`` list), and its server marks the unconstrained Pareto front (or, for one
objective, the unconstrained best value) as the study's best trials. Two layers fix that without
writing anything to the study:

* ``DashboardStorage`` is a read-only view of the real storage. Every read goes to the real
  storage; every write raises ``ReadOnlyStorageError``. Trials it returns carry their constraints
  as the list the dashboard reads (legacy list first, then the ``constraints:<key>`` values in
  key order); the per-key attributes are left out of the view so that Optuna code run on it counts
  each constraint once.
* The WSGI layer replaces the ``best_trials`` of ``GET /api/studies/<id>`` with Optuna's own
  answer, ``study.best_trials`` computed on the real storage (for one objective too: the feasible
  trials with the best value, ``[]`` when none is feasible), and answers every request that would
  change something (POST, PUT, DELETE, ...) with 403 and a JSON reason.

Writing the legacy list into the study instead is not an option: Optuna 5 reads both forms, so
``FrozenTrial.constraints`` would hold every constraint twice.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import socketserver
import sys
import threading
from collections.abc import Callable, Container, Iterable, Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

from ..errors import PrimeSVTError

HOST = "127.0.0.1"
LEGACY_CONSTRAINTS = "constraints"
"""The system attribute optuna-dashboard 0.21 reads: a list, feasible when every value is <= 0."""
CONSTRAINT_PREFIX = "constraints:"
"""Optuna 5's ``trial.set_constraint(key, value)`` stores ``constraints:<key>``."""
READ_ONLY_REASON = "primesvt dashboard is read-only: it never changes a study (use Optuna for that)"

_logger = logging.getLogger(__name__)
_STUDY_DETAIL = re.compile(r"/api/studies/(\d+)")
_SAFE_METHODS = frozenset({"GET", "HEAD"})


class ReadOnlyStorageError(PrimeSVTError):
    """A write reached the dashboard's read-only view of a storage."""


def dashboard_constraints(system_attrs: dict[str, Any]) -> list[float] | None:
    """A trial's constraints as the list optuna-dashboard 0.21 reads, or None when it has none.

    The legacy list comes first, then Optuna 5's ``constraints:<key>`` values sorted by key, so a
    position means the same constraint in every trial that sets the same keys. Infinite values
    become the largest finite float of the same sign (JSON has no infinity, and the page would not
    load); NaN is refused by Optuna itself. Feasibility (every value <= 0) is unchanged.
    """
    legacy = system_attrs.get(LEGACY_CONSTRAINTS)
    named = sorted((k[len(CONSTRAINT_PREFIX):], v) for k, v in system_attrs.items() if k.startswith(CONSTRAINT_PREFIX))
    if legacy is None and not named:
        return None
    values = [*(legacy or ()), *(v for _, v in named)]
    return [math.copysign(sys.float_info.max, v) if math.isinf(v) else v for v in values]


def dashboard_system_attrs(system_attrs: dict[str, Any]) -> dict[str, Any]:
    """``system_attrs`` as the dashboard sees them: constraints as one list (a new dict; the
    argument is never changed)."""
    values = dashboard_constraints(system_attrs)
    if values is None:
        return system_attrs
    attrs = {k: v for k, v in system_attrs.items() if not k.startswith(CONSTRAINT_PREFIX)}
    attrs[LEGACY_CONSTRAINTS] = values
    return attrs


def dashboard_trial(trial: FrozenTrial) -> FrozenTrial:
    """The trial as the dashboard sees it; the trial itself is not changed (storages hand out
    their cached objects when asked for ``deepcopy=False``), a trial without constraints is
    returned as it is."""
    attrs = dashboard_system_attrs(trial.system_attrs)
    if attrs is trial.system_attrs:
        return trial
    view = copy.copy(trial)
    view.system_attrs = attrs
    return view


class DashboardStorage(BaseStorage):
    """A read-only view of ``storage`` for optuna-dashboard (see the module docstring).

    It is no ``RDBStorage``, so the dashboard offers no schema migration, and no heartbeat storage,
    so nothing fails stale trials through it. Safe to share between threads as far as the real
    storage is.
    """

    def __init__(self, storage: BaseStorage) -> None:
        self._storage = storage._storage if isinstance(storage, DashboardStorage) else storage

    @property
    def storage(self) -> BaseStorage:
        """The real storage behind the view."""
        return self._storage

    def _refuse(self, what: str) -> ReadOnlyStorageError:
        return ReadOnlyStorageError(f"{READ_ONLY_REASON}; refused to {what}")

    # Writes: all refused.

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        raise self._refuse(f"create study {study_name!r}")

    def delete_study(self, study_id: int) -> None:
        raise self._refuse(f"delete study {study_id}")

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        raise self._refuse(f"set user attribute {key!r} of study {study_id}")

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        raise self._refuse(f"set system attribute {key!r} of study {study_id}")

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        raise self._refuse(f"create a trial in study {study_id}")

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: BaseDistribution) -> None:
        raise self._refuse(f"set parameter {param_name!r} of trial id {trial_id}")

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        raise self._refuse(f"set the state of trial id {trial_id} to {state.name}")

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        raise self._refuse(f"report an intermediate value of trial id {trial_id}")

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        raise self._refuse(f"set user attribute {key!r} of trial id {trial_id}")

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        raise self._refuse(f"set system attribute {key!r} of trial id {trial_id}")

    # Study reads: passed through.

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._storage.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._storage.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._storage.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._storage.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._storage.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        # The dashboard sorts by id only for an RDBStorage, which this view is not.
        return sorted(self._storage.get_all_studies(), key=lambda s: s._study_id)

    # Trial reads: constraints presented as the dashboard's list.

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._storage.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def get_trial_number_from_id(self, trial_id: int) -> int:
        return self._storage.get_trial_number_from_id(trial_id)

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        return self._storage.get_trial_param(trial_id, param_name)

    def get_trial_params(self, trial_id: int) -> dict[str, Any]:
        return self._storage.get_trial_params(trial_id)

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._storage.get_trial_user_attrs(trial_id)

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        return dashboard_system_attrs(self._storage.get_trial_system_attrs(trial_id))

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return dashboard_trial(self._storage.get_trial(trial_id))

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return [dashboard_trial(t) for t in self._storage.get_all_trials(study_id, deepcopy=deepcopy, states=states)]

    def get_n_trials(self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None) -> int:
        return self._storage.get_n_trials(study_id, state)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        """The storage's answer (best value among all complete trials, feasible or not), as the
        ``BaseStorage`` contract says; the WSGI layer of ``dashboard_app`` replaces what the page
        shows as best with Optuna's feasible answer (raising here when no feasible trial exists
        would fail the whole study page)."""
        return dashboard_trial(self._storage.get_best_trial(study_id))

    def check_trial_is_updatable(self, trial_id: int, trial_state: TrialState) -> None:
        self._storage.check_trial_is_updatable(trial_id, trial_state)

    def remove_session(self) -> None:
        self._storage.remove_session()


def optuna_best_trials(storage: BaseStorage, study_id: int) -> list[FrozenTrial]:
    """Optuna's ``study.best_trials``: the Pareto front of the feasible complete trials when any
    trial has constraints (for one objective, the feasible trials with the best value; ``[]`` when
    none is feasible), of all complete trials otherwise."""
    if isinstance(storage, DashboardStorage):
        storage = storage.storage
    return optuna.load_study(study_name=storage.get_study_name_from_id(study_id), storage=storage).best_trials


StartResponse = Callable[..., Any]


def dashboard_app(storage: BaseStorage) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """optuna-dashboard's WSGI app on a read-only ``DashboardStorage`` of ``storage``, with its
    study detail's best trials taken from Optuna and every changing request refused (403)."""
    from optuna_dashboard import wsgi
    from optuna_dashboard._serializer import serialize_frozen_trial

    view = DashboardStorage(storage)
    real = view.storage
    inner = wsgi(view)

    def refuse(start_response: StartResponse, status: str, reason: str) -> list[bytes]:
        body = json.dumps({"reason": reason}).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        if method not in _SAFE_METHODS:
            return refuse(start_response, "403 Forbidden", READ_ONLY_REASON)
        match = _STUDY_DETAIL.fullmatch(environ.get("PATH_INFO", "").rstrip("/"))
        if match is None or method != "GET":
            return inner(environ, start_response)

        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            captured.update(status=status, headers=headers)
            return lambda data: None  # bottle never uses write()

        result = inner(environ, capture)
        try:
            body = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        status, headers = captured["status"], captured["headers"]
        if status.startswith("200"):
            try:
                data = json.loads(body)
                if not data.get("is_preferential"):  # a preferential study's best is the dashboard's own
                    study_id = int(match.group(1))
                    study_attrs = real.get_study_system_attrs(study_id)
                    data["best_trials"] = [serialize_frozen_trial(study_id, dashboard_trial(t), study_attrs)
                                           for t in optuna_best_trials(real, study_id)]
                    body = json.dumps(data).encode()
            except Exception as exc:  # noqa: BLE001 - never show the dashboard's unconstrained best instead
                _logger.exception("cannot take the best trials of %s from Optuna", environ.get("PATH_INFO"))
                return refuse(start_response, "500 Internal Server Error",
                              f"cannot take the best trials from Optuna: {type(exc).__name__}: {exc}")
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [body]

    return app


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    """The dashboard page fires several API requests at once; serve them concurrently."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - wsgiref's signature
        pass


def make_dashboard_server(storage: BaseStorage, port: int = 8080, *, quiet: bool = True) -> WSGIServer:
    """A ready (bound, not yet serving) read-only dashboard server on loopback."""
    handler = _QuietHandler if quiet else WSGIRequestHandler
    return make_server(HOST, port, dashboard_app(storage), server_class=_ThreadingServer, handler_class=handler)


def dashboard_url(server: WSGIServer) -> str:
    return f"http://{HOST}:{server.server_port}/dashboard/"


def serve_in_thread(storage: BaseStorage, port: int = 0) -> tuple[WSGIServer, str]:
    """Serve in a background thread (scripts and tests); stop with ``server.shutdown()``."""
    server = make_dashboard_server(storage, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, dashboard_url(server)
