"""The common behaviour of each model's hyperparameter dataclass."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import ClassVar, Self


@dataclass(frozen=True)
class Range:
    """The values a hyperparameter takes: a value outside trains nothing useful (0 factors,
    -1 iterations) yet looked like a normal run in MLflow."""

    minimum: float | None = None
    exclusive_minimum: float | None = None
    maximum: float | None = None
    exclusive_maximum: float | None = None

    def schema(self) -> dict[str, float]:
        """The JSON-schema keywords (Airflow refuses a run outside them at trigger time)."""
        names = {"minimum": "minimum", "exclusive_minimum": "exclusiveMinimum",
                 "maximum": "maximum", "exclusive_maximum": "exclusiveMaximum"}
        return {names[f.name]: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}

    def __contains__(self, value: float) -> bool:
        return math.isfinite(value) and not (
            (self.minimum is not None and value < self.minimum)
            or (self.exclusive_minimum is not None and value <= self.exclusive_minimum)
            or (self.maximum is not None and value > self.maximum)
            or (self.exclusive_maximum is not None and value >= self.exclusive_maximum))

    def __str__(self) -> str:
        low = (f">= {_shown(self.minimum)}" if self.minimum is not None else
               f"> {_shown(self.exclusive_minimum)}" if self.exclusive_minimum is not None
               else "")
        high = (f"<= {_shown(self.maximum)}" if self.maximum is not None else
                f"< {_shown(self.exclusive_maximum)}" if self.exclusive_maximum is not None
                else "")
        return " and ".join(filter(None, (low, high))) or "a finite number"


def _shown(bound: float) -> str:
    """A bound as written: 4294967295, not 4.29497e+09."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


AT_LEAST_ONE = Range(minimum=1)
NON_NEGATIVE = Range(minimum=0)
POSITIVE = Range(exclusive_minimum=0)
SEED = Range(minimum=0, maximum=2**32 - 1)  # numpy's and JAX's seeds are unsigned 32-bit
# Each model's hyperparameter ranges, by field; here rather than beside each dataclass so that
# the DAG files (spark_jobs.training_dag) read them without loading the model libraries.
RANGES: dict[str, dict[str, Range]] = {
    "item2vec": {"vector_size": AT_LEAST_ONE, "window": AT_LEAST_ONE, "epochs": AT_LEAST_ONE,
                 # gensim trains nothing without negative samples when hs=0 (ours)
                 "negative": AT_LEAST_ONE, "ns_exponent": Range(), "sample": NON_NEGATIVE,
                 "min_count": AT_LEAST_ONE, "alpha": POSITIVE, "seed": SEED,
                 "workers": AT_LEAST_ONE, "neighbours": AT_LEAST_ONE},
    "als": {"factors": AT_LEAST_ONE, "regularization": NON_NEGATIVE,
            "iterations": AT_LEAST_ONE, "alpha": POSITIVE, "seed": SEED,
            # implicit reads 0 threads as "every core"
            "threads": AT_LEAST_ONE, "candidates": AT_LEAST_ONE, "neighbours": AT_LEAST_ONE},
    "sasrec": {"dim": AT_LEAST_ONE, "max_len": AT_LEAST_ONE, "blocks": AT_LEAST_ONE,
               "epochs": AT_LEAST_ONE, "dropout": Range(minimum=0, exclusive_maximum=1),
               "learning_rate": POSITIVE, "batch": AT_LEAST_ONE, "temperature": POSITIVE,
               "refit_epochs": NON_NEGATIVE,  # 0: the served network is the evaluated one
               # 0: the refit leaves the evaluated network as it is (as refit_epochs 0 does)
               "refit_learning_rate": NON_NEGATIVE, "seed": SEED, "candidates": AT_LEAST_ONE},
}


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

    def __post_init__(self) -> None:
        """Refuse a value outside its range, naming the parameter and the range."""
        for name, allowed in RANGES[self.MODEL].items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{self.MODEL} parameter {name!r}: {value!r} is out of range "
                                 f"(allowed: {allowed})")

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
