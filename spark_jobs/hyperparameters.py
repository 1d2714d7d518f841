"""The common behaviour of each model's hyperparameter dataclass."""

from __future__ import annotations

import re
from typing import ClassVar, Self


class Hyperparameters:
    """Mixin of the frozen dataclasses of model hyperparameters (`ALSParams`, ...)."""

    MODEL: ClassVar[str]  # the model's name, in error messages

    @classmethod
    def from_dict(cls, values: dict | None) -> Self:
        """Overrides from a DAG run or the CLI (strings too), cast to each field's type;
        an unknown name, or a value the cast would change, fails before any work starts."""
        unknown = set(values or {}) - set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
        if unknown:
            raise ValueError(f"unknown {cls.MODEL} parameters: {sorted(unknown)}")
        out = {}
        for name, value in (values or {}).items():
            try:
                out[name] = _cast(value, type(getattr(cls, name)))
            except ValueError as exc:
                raise ValueError(f"{cls.MODEL} parameter {name!r}: {exc}") from None
        return cls(**out)


_INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits: str.isdigit also takes "²"


def _cast(value: object, kind: type) -> int | float:
    """`value` as an int or a float, refusing what the cast would change (64.9 -> 64)."""
    # bool is an int to Python, but `true` factors is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{value!r} is not a number")
    if isinstance(value, int):
        try:
            return value if kind is int else float(value)
        except OverflowError:
            raise ValueError(f"an integer of {len(str(value))} digits is too large for a "
                             "float") from None
    if kind is int and isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value)  # exact, however many digits
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None
    if kind is float:
        return number
    if not number.is_integer():
        raise ValueError(f"{value!r} is not a whole number")
    return int(number)
