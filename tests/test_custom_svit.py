"""Bring your own SViT: docs/engine.md's example runs as written, prunes exactly, and a model part
no room describes is one PrimeSVTError line naming the module."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
import torch

from primesvt_optuna.errors import PrimeSVTError
from primesvt_optuna.pruning import Engine, adapters

from test_families import check_exact_while_spiking, firing

DOC = Path(__file__).resolve().parents[1] / "docs" / "engine.md"


def example() -> str:
    """The python block of the 'Bring your own SViT' section."""
    text = DOC.read_text().split("## Bring your own SViT", 1)[1]
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


@pytest.fixture
def doc_example(monkeypatch: pytest.MonkeyPatch) -> tuple[dict, str]:
    monkeypatch.setattr(adapters, "ROOMS", dict(adapters.ROOMS))  # the example's rooms do not outlive the test
    namespace: dict = {"__name__": "byo_example"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(example(), str(DOC), "exec"), namespace)
    return namespace, printed.getvalue()


def test_unseen_model_is_refused_naming_the_module_then_pruned_exactly_once_its_rooms_exist(doc_example) -> None:
    namespace, printed = doc_example
    first = printed.splitlines()[0]
    assert first.startswith("cannot prune TinySViT: module 'stem' (Conv2d) is in no prunable layer")
    engine = namespace["engine"]
    assert {"stem", "blocks.0.1.fc1+dw", "blocks.1.1.fc2", "blocks.0.0.q_conv+k_conv+v_conv"} <= set(engine.layers)
    torch.manual_seed(0)
    model = namespace["TinySViT"]()
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    engine = check_exact_while_spiking(firing(model.double(), x), x, "TinySViT")
    dw = engine.prune({"blocks.0.1.fc1+dw": 0.5}).blocks[0][1].dw
    assert dw.weight.shape == (64, 1, 3, 3) and dw.groups == dw.in_channels == dw.out_channels == 64


def test_a_block_without_a_room_is_named_and_a_subclass_does_not_inherit_its_parents_room(doc_example) -> None:
    namespace, _ = doc_example
    del adapters.ROOMS[namespace["ConvFFN"]]
    with pytest.raises(PrimeSVTError, match=r"^cannot prune TinySViT: module 'blocks\.0\.1\.fc1' \(Conv2d\)") as info:
        Engine(namespace["TinySViT"]())
    assert "\n" not in str(info.value)
    from spikingjelly.activation_based.layer.attention import SpikeDrivenSelfAttention

    class MySDSA(SpikeDrivenSelfAttention):
        """Same modules, possibly another forward: no room may be assumed."""

    model = namespace["TinySViT"]()
    model.blocks[0][0] = MySDSA(32, num_heads=2)
    adapters.ROOMS[namespace["ConvFFN"]] = adapters.Room(namespace["convffn"])
    with pytest.raises(PrimeSVTError, match=r"module 'blocks\.0\.0\.q_conv' \(Conv2d\)"):
        Engine(model)


def test_a_room_naming_a_missing_module_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from spikingjelly.activation_based.model.spike_driven_transformer import _MLP

    from primesvt_optuna.models import build_model
    from primesvt_optuna.pruning.families.common import filters

    monkeypatch.setitem(adapters.ROOMS, _MLP, adapters.Room(lambda m, embed: [filters(m, "fc1", "bn9", "lif2")]))
    with pytest.raises(PrimeSVTError, match=r"names module 'blocks\.0\.mlp\.bn9'"):
        Engine(build_model({"preset": "digits-sdt-8-64"}))
