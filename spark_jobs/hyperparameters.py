"""The common behaviour of each model's hyperparameter dataclass."""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import ClassVar, Self


class Hyperparameters:
    """Mixin of the frozen dataclasses of model hyperparameters (`ALSParams`, ...)."""

    MODEL: ClassVar[str]  # the model's name, in error messages
    # Per engine, the fields its trainer never reads, and why: a run neither logs them (MLflow
    # would show settings that had no effect) nor takes them as overrides.
    NOT_USED_BY: ClassVar[dict[str, tuple[frozenset[str], str]]] = {}

    @classmethod
    def from_dict(cls, values: dict | None, engine: str | None = None) -> Self:
        """Overrides from a DAG run or the CLI (strings too), cast to each field's type;
        an unknown name, one `engine` does not use, or a value the cast would change, fails
        before any work starts."""
        unknown = set(values or {}) - set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
        if unknown:
            raise ValueError(f"unknown {cls.MODEL} parameters: {sorted(unknown)}")
        unused, why = cls.NOT_USED_BY.get(engine or "", (frozenset(), ""))
        if ignored := unused & set(values or {}):
            raise ValueError(f"{cls.MODEL} parameters {sorted(ignored)} do not apply to engine "
                             f"{engine!r}: {why}")
        out = {}
        for name, value in (values or {}).items():
            try:
                out[name] = _cast(value, type(getattr(cls, name)))
            except ValueError as exc:
                raise ValueError(f"{cls.MODEL} parameter {name!r}: {exc}") from None
        return cls(**out)

    def used_by(self, engine: str) -> dict[str, int | float]:
        """The values `engine`'s trainer reads: what a run logs as its parameters."""
        unused = self.NOT_USED_BY.get(engine, (frozenset(), ""))[0]
        return {k: v for k, v in asdict(self).items() if k not in unused}  # type: ignore[call-overload]


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
