"""Models that save and load themselves: a small shape dataclass per model is all its files need to rebuild it."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.store.model_files import read_model, write_model


class SavesItself:
    """Mixin for a model (an ``nn.Module``) with a small shape dataclass ``Shape``: ``save(folder)`` writes its weights
    and its shape record, ``Model.load(folder)`` builds it from that record and loads the weights strictly."""

    Shape: type

    @property
    def shape(self) -> Any:
        raise NotImplementedError

    @classmethod
    def from_shape(cls, shape: Any) -> Any:
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        return {"class": type(self).__name__, **dataclasses.asdict(self.shape)}

    @classmethod
    def shape_from_record(cls, record: dict[str, Any]) -> Any:
        return cls.Shape(**{key: value for key, value in record.items() if key != "class"})

    def save(self, folder: Path, step: int | None = None) -> None:
        write_model(folder, self.record(), self.state_dict(), step)

    @classmethod
    def load(cls, folder: Path, part: str = "") -> Any:
        record, tensors = read_model(folder, cls.__name__, part)
        model = cls.from_shape(cls.shape_from_record(record))
        try:
            missing, unexpected = model.load_state_dict(tensors, strict=False)
        except RuntimeError as err:  # a tensor of another shape than the record says
            raise UserError(f"{folder}: weights do not match its config "
                            f"({str(err).splitlines()[-1].strip()})") from None
        if missing or unexpected:
            raise UserError(f"{folder}: weights do not match its config (missing {missing}, unexpected {unexpected})")
        return model
