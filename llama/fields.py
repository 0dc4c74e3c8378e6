"""Typed fields of the backbones' JSON files (Meta's `params.json`, Hugging Face's `config.json` and its
`rope_scaling` object): each field a reader takes says its type and the values it may hold, and a
value of another type is an error naming the field and the file, never a value read loosely
(`"false"` taken as true, 8192.5 as a count, a string as a number).

JSON types: an `int` field holds a JSON integer (not 8192.5, 8192.0, true or "8192"), a `float` field
any finite JSON number (not true, NaN or Infinity), a `bool` field true or false (not "false", 0 or 1),
a `str` field a string. `null` is the field's default where `nullable`, an error elsewhere.
"""
import math
from dataclasses import dataclass
from typing import Optional, Tuple

from util.errors import CheckpointError

REQUIRED = object()   # a field the file must hold


@dataclass(frozen=True)
class Field:
    """One JSON field: its key in the file, its type, and what it may hold."""
    key: str
    kind: type                    # int, float (any finite number), bool, str
    default: object = REQUIRED    # what an absent field means (REQUIRED: it must be there)
    low: Optional[float] = None   # the smallest value allowed ...
    above: bool = False           # ... or the value it must exceed (low excluded)
    also: Tuple = ()              # values allowed beside the range (params.json's vocab_size -1)
    nullable: bool = False        # null means the default
    to: Optional[str] = None      # the ModelArgs field it gives (None: checked, read by its reader)

    def read(self, obj: dict, where) -> object:
        """The field's value in `obj` (the default where absent), checked; CheckpointError naming the
        field and `where` (the file, and the object inside it)."""
        if self.key not in obj or (obj[self.key] is None and self.nullable):
            if self.default is REQUIRED:
                raise CheckpointError(f"{where}: '{self.key}' is missing (it must be {self.what})")
            return self.default
        v = obj[self.key]
        if not self._typed(v) or (v not in self.also and not self._in_range(v)):
            raise CheckpointError(f"{where}: '{self.key}' = {v!r} is not {self.what}")
        return float(v) if self.kind is float else v

    def _typed(self, v) -> bool:
        if isinstance(v, bool) or self.kind is bool:
            return isinstance(v, bool) and self.kind is bool
        if self.kind is float:
            return isinstance(v, (int, float)) and math.isfinite(v)
        return isinstance(v, self.kind)

    def _in_range(self, v) -> bool:
        return self.low is None or v > self.low or (v == self.low and not self.above)

    @property
    def what(self) -> str:
        kind = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}[self.kind]
        if self.low is not None:
            kind += f" {'>' if self.above else '>='} {self.low:g}"
        if self.also:
            kind += " (or " + ", ".join(map(str, self.also)) + ")"
        return kind


def read_fields(obj: dict, fields, where) -> dict:
    """{key: value} of every field in `fields`, read and checked (`Field.read`)."""
    return {f.key: f.read(obj, where) for f in fields}
