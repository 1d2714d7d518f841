"""The common behaviour of each model's hyperparameter dataclass."""

from __future__ import annotations

from typing import ClassVar, Self


class Hyperparameters:
    """Mixin of the frozen dataclasses of model hyperparameters (`ALSParams`, ...)."""

    MODEL: ClassVar[str]  # the model's name, in error messages

    @classmethod
    def from_dict(cls, values: dict | None) -> Self:
        """Overrides from a DAG run or the CLI (strings too), cast to each field's type;
        an unknown name fails before any work starts."""
        unknown = set(values or {}) - set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
        if unknown:
            raise ValueError(f"unknown {cls.MODEL} parameters: {sorted(unknown)}")
        return cls(**{k: type(getattr(cls, k))(v) for k, v in (values or {}).items()})
