"""common/models/saves_itself.py: a small model of its own saved and loaded equals the one in memory (its record,
every tensor, its output); a weight of another shape, a missing or an extra one, or another class is one error."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from common.errors import UserError
from common.models.saves_itself import SavesItself


@dataclass(frozen=True)
class TwoLayerShape:
    width: int
    hidden: int
    bias: bool = True


class TwoLayer(SavesItself, nn.Module):
    Shape = TwoLayerShape

    def __init__(self, width: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.width, self.hidden, self.bias = width, hidden, bias
        self.up = nn.Linear(width, hidden, bias=bias)
        self.down = nn.Linear(hidden, width, bias=False)

    @property
    def shape(self) -> TwoLayerShape:
        return TwoLayerShape(self.width, self.hidden, self.bias)

    @classmethod
    def from_shape(cls, shape: TwoLayerShape) -> TwoLayer:
        return cls(shape.width, shape.hidden, shape.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


class Other(TwoLayer):
    pass


@pytest.fixture
def saved(tmp_path: Path) -> tuple[TwoLayer, Path]:
    torch.manual_seed(0)
    model = TwoLayer(3, 5)
    model.save(tmp_path, step=7)
    return model, tmp_path


def test_saved_and_loaded_equals_the_model_in_memory(saved: tuple[TwoLayer, Path]):
    model, folder = saved
    loaded = TwoLayer.load(folder)
    assert type(loaded) is TwoLayer and loaded.shape == model.shape
    assert json.loads((folder / "config.json").read_text())["model"] == {"class": "TwoLayer", "width": 3, "hidden": 5,
                                                                       "bias": True}
    on_disk = load_file(folder / "best_model.safetensors")
    assert set(on_disk) == {"up.weight", "up.bias", "down.weight"}
    for name, tensor in model.state_dict().items():
        assert torch.equal(on_disk[name], tensor) and torch.equal(loaded.state_dict()[name], tensor), name
    x = torch.randn(4, 3)
    assert torch.equal(loaded(x), model(x))
    with safe_open(str(folder / "best_model.safetensors"), framework="pt") as handle:
        assert handle.metadata() == {"step": "7"}


def test_another_shape_is_rebuilt_from_its_record(tmp_path: Path):
    TwoLayer(2, 4, bias=False).save(tmp_path)
    loaded = TwoLayer.load(tmp_path)
    assert loaded.shape == TwoLayerShape(2, 4, False) and loaded.up.bias is None


def test_a_weight_of_the_wrong_shape_is_one_error_line(saved: tuple[TwoLayer, Path]):
    _, folder = saved
    tensors = load_file(folder / "best_model.safetensors")
    tensors["down.weight"] = torch.zeros(3, 6)
    save_file(tensors, folder / "best_model.safetensors")
    with pytest.raises(UserError) as caught:
        TwoLayer.load(folder)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{folder}: weights do not match its config (")
    assert "down.weight" in message and caught.value.__cause__ is None


def test_a_record_that_disagrees_with_the_weights_is_one_error(saved: tuple[TwoLayer, Path]):
    _, folder = saved
    config = json.loads((folder / "config.json").read_text())
    config["model"]["hidden"] = 6
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="weights do not match its config"):
        TwoLayer.load(folder)


@pytest.mark.parametrize("change, missing, extra", [("drop", ["up.bias"], []), ("add", [], ["extra"])])
def test_a_missing_or_an_extra_weight_is_one_error(saved: tuple[TwoLayer, Path], change: str, missing: list,
                                                   extra: list):
    _, folder = saved
    tensors = load_file(folder / "best_model.safetensors")
    if change == "drop":
        del tensors["up.bias"]
    else:
        tensors["extra"] = torch.zeros(1)
    save_file(tensors, folder / "best_model.safetensors")
    with pytest.raises(UserError) as caught:
        TwoLayer.load(folder)
    assert str(caught.value) == f"{folder}: weights do not match its config (missing {missing}, unexpected {extra})"


def test_another_class_is_refused(saved: tuple[TwoLayer, Path]):
    with pytest.raises(UserError, match="holds a TwoLayer model, not a Other"):
        Other.load(saved[1])


def test_the_record_and_the_shape_round_trip():
    model = TwoLayer(3, 5, bias=False)
    record = model.record()
    assert record == {"class": "TwoLayer", "width": 3, "hidden": 5, "bias": False}
    assert TwoLayer.shape_from_record(record) == TwoLayerShape(3, 5, False)
