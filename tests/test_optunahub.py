"""package/samplers/primesvt is a working OptunaHub package: it loads with optunahub's own loader,
hands out primesvt_optuna's classes (re-exported, not copied), runs the walk to its end through
them, follows the registry's template (front matter, license, requirements) and its example and
README snippet run. No network: everything loads from this checkout."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import optuna
import optunahub
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

import primesvt_optuna.plugin as plugin
from primesvt_optuna.plugin import samplers

REPO = Path(__file__).resolve().parents[1]
REGISTRY = REPO / "package"
PACKAGE = REGISTRY / "samplers" / "primesvt"

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def hub():
    return optunahub.load_local_module("samplers/primesvt", registry_root=str(REGISTRY))


def test_package_has_the_template_files() -> None:
    assert {p.name for p in PACKAGE.iterdir()} >= {"__init__.py", "README.md", "LICENSE", "requirements.txt", "example.py"}


def test_loads_as_a_registry_module_and_re_exports(hub) -> None:
    assert hub.__name__ == "optunahub_registry.package.samplers.primesvt"
    assert set(samplers.__all__) <= set(hub.__all__)
    for name in hub.__all__:
        assert getattr(hub, name) is not None, name
    # Re-exported, not copied: the very objects primesvt_optuna defines.
    for name in samplers.__all__:
        assert getattr(hub, name) is getattr(samplers, name), name
    for name in ("PrioritizedSampler", "SmallestFirstSampler", "RandomOrderSampler", "UniformSampler",
                 "SyntheticObjective", "PruningObjective", "ConstraintPruner"):
        assert getattr(hub, name) is getattr(plugin, name), name
    assert issubclass(hub.PrioritizedSampler, optuna.samplers.BaseSampler)
    # No class is defined inside the package itself.
    source = (PACKAGE / "__init__.py").read_text()
    assert not re.search(r"^\s*(class|def) ", source, re.M)


SIZES = {"embed": 5000, "fc1": 3500, "fc2": 3500, "qkv": 1800, "proj": 600, "head": 300}
SENSITIVITY = {"embed": 0.1, "fc1": 0.03, "fc2": 0.1, "qkv": 0.06, "proj": 0.4, "head": 1.5}
GRID = (0.15, 0.3, 0.45, 0.6, 0.75, 0.9)
BUDGET, TARGET, CAP = 0.03, 0.3, 500


def _run(sampler_cls, objective_cls) -> tuple[optuna.Study, object]:
    objective = objective_cls(SIZES, sensitivity=SENSITIVITY, max_accuracy_drop=BUDGET, memory_target=TARGET, grid=GRID,
                              accept="point")  # the walk itself, under the paper's rule
    study = optuna.create_study(directions=objective.directions, sampler=sampler_cls(grid=GRID))
    study.optimize(objective, n_trials=CAP)
    return study, objective


def test_loaded_prioritized_sampler_walks_to_a_feasible_selection(hub) -> None:
    study, objective = _run(hub.PrioritizedSampler, hub.SyntheticObjective)
    assert type(study.sampler) is plugin.PrioritizedSampler

    # The walk stopped the study by itself, well before the trial cap, and says it is done.
    assert len(study.trials) < CAP
    state = study.sampler.walk_state(study)
    assert state.done and state.memory_met

    # The selection meets both constraints, recomputed from the closed-form objective.
    found = hub.result(study)
    rates = found.selected["rates"]
    assert found.both_met and found.finished
    assert rates == {name.removeprefix("rate:"): r for name, r in state.committed.items() if r > 0}
    floor = objective.accuracy({}) - BUDGET
    assert objective.accuracy(rates) >= floor - 1e-9
    assert 1 - objective.predict_bytes(rates) / objective.base_bytes >= TARGET
    assert found.selected["accuracy"] == pytest.approx(objective.accuracy(rates))

    # Largest first, and each commit is the highest grid rate that still fits in its context.
    committed_layers = [c.layer.removeprefix("rate:") for c in state.commits]
    assert committed_layers == sorted(committed_layers, key=lambda n: -SIZES[n])
    context: dict[str, float] = {}
    for commit in state.commits:
        layer = commit.layer.removeprefix("rate:")
        alone = [r for r in GRID if objective.accuracy({layer: r}) >= floor - 1e-9]
        bound = max(alone, default=0.0)
        fits = [r for r in GRID if r <= bound and objective.accuracy({**context, layer: r}) >= floor - 1e-9]
        assert commit.rate == max(fits, default=0.0), layer
        context[layer] = commit.rate


def test_hub_study_matches_the_plain_plugin_trial_for_trial(hub) -> None:
    through_hub, _ = _run(hub.PrioritizedSampler, hub.SyntheticObjective)
    direct, _ = _run(plugin.PrioritizedSampler, plugin.SyntheticObjective)
    assert [t.params for t in through_hub.trials] == [t.params for t in direct.trials]
    assert [t.state for t in through_hub.trials] == [t.state for t in direct.trials]


def _front_matter() -> dict:
    text = (PACKAGE / "README.md").read_text()
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "README.md must start with the registry's front matter"
    return yaml.safe_load(match.group(1))


def test_readme_front_matter_follows_the_registry() -> None:
    meta = _front_matter()
    # The registry's header check (optunahub-registry/header_confirm.py): present and non-empty.
    for key in ("author", "title", "description", "tags", "optuna_versions", "license"):
        assert meta.get(key) not in ("", None), key
    assert "sampler" in meta["tags"]  # required for a package under package/samplers/
    assert meta["license"] == "MIT License"
    optuna_spec = _pyproject_requirements()["optuna"].specifier
    for version in meta["optuna_versions"]:
        assert Version(str(version)) in optuna_spec, version


def _pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {Requirement(line).name: Requirement(line) for line in project["dependencies"]}


def test_license_and_requirements_match_the_distribution() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert (PACKAGE / "LICENSE").read_text().startswith("MIT License\n")

    lines = [ln.strip() for ln in (PACKAGE / "requirements.txt").read_text().splitlines()]
    wanted = [Requirement(ln) for ln in lines if ln and not ln.startswith("#")]
    assert wanted[0].name == "primesvt-optuna"
    assert wanted[0].specifier.contains(importlib.metadata.version("primesvt-optuna"))
    declared = _pyproject_requirements()
    for req in wanted[1:]:
        assert req.name in declared, req.name
        assert req.specifier == declared[req.name].specifier, req.name  # no drift from pyproject
        assert req.specifier.contains(importlib.metadata.version(req.name), prereleases=True), req.name


def test_readme_example_runs(hub, monkeypatch, capsys) -> None:
    """The README's snippet, with load_module pointed at this checkout instead of GitHub."""
    text = (PACKAGE / "README.md").read_text()
    code = re.search(r"## Example\n.*?```python\n(.*?)```", text, re.S).group(1)
    assert 'optunahub.load_module("samplers/primesvt")' in code
    monkeypatch.setattr(optunahub, "load_module", lambda package, **_: hub if package == "samplers/primesvt" else None)
    exec(compile(code, "README.md", "exec"), {})
    expected = re.search(r"^# (Both constraints met.*)$", code, re.M).group(1)
    assert capsys.readouterr().out.strip() == expected


def test_example_script_runs_offline_from_anywhere(tmp_path) -> None:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    done = subprocess.run(
        [sys.executable, str(PACKAGE / "example.py")], cwd=tmp_path, capture_output=True, text=True, env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    trials = int(re.match(r"(\d+) trials; walk finished: True$", lines[0]).group(1))
    assert 0 < trials < 100
    saving = float(re.match(r"Both constraints met: saves ([\d.]+)% of the model bytes", lines[1]).group(1))
    assert saving >= 30.0  # the example's memory target
    assert [ln.split()[1] for ln in lines[2:]] == ["patch_embed", "block0.mlp.fc1"]  # largest first
    assert "Triton not available" not in done.stdout + done.stderr
