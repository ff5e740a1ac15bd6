"""A table's schema: public facts the user states about their data (column bounds, category levels, classes).

Whatever a schema says is public by the user's word, so scaling to its bounds, one-hot encoding to its
levels and predicting its classes read nothing from the private rows and cost no ε. The file is JSON or TOML:

    {"columns": {"age": {"min": 0, "max": 120}, "colour": {"categories": ["red", "green", "blue"]}},
     "default": {"min": 0, "max": 255},
     "classes": ["no", "yes"]}

`default` bounds every numeric column the schema does not name (an NPZ's columns or pixels have no names).
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import DataError

SCHEMA_TYPES = (".json", ".toml")
MAX_SCHEMA_BYTES = 1024**2
_KEYS = ("columns", "default", "classes")


@dataclass(frozen=True)
class Schema:
    """Public column bounds (low, high), category levels, default bounds and classes of one table."""

    name: str  # the file's name, for notes and messages
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    default_bounds: Optional[tuple[float, float]] = None
    classes: Optional[tuple[str, ...]] = None

    def bounds_of(self, column: str) -> Optional[tuple[float, float]]:
        """The public bounds of a numeric column: its own, else the default, else None (none stated)."""
        return self.bounds.get(column, self.default_bounds)


def _fail(name: str, message: str) -> DataError:
    return DataError(f"schema {name}: {message}")


def _read(path: Path) -> Any:
    if "\0" in str(path):
        raise DataError(f"schema path {str(path)!r} contains a NUL byte: rename the file")
    if path.suffix.lower() not in SCHEMA_TYPES:
        raise _fail(path.name, f"use a {' or '.join(SCHEMA_TYPES)} file")
    if not path.is_file():
        raise DataError(f"schema {path}: no such file")
    if path.stat().st_size > MAX_SCHEMA_BYTES:
        raise _fail(path.name, f"larger than {MAX_SCHEMA_BYTES // 1024} KiB; a schema lists bounds, levels and classes")
    try:
        text = path.read_text(encoding="utf-8")
        return tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except UnicodeDecodeError:
        raise _fail(path.name, "not UTF-8 text") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise _fail(path.name, f"not valid {path.suffix.lower()[1:].upper()}: {exc}") from None


def _range(name: str, where: str, entry: Any) -> tuple[float, float]:
    low, high = entry.get("min"), entry.get("max")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high))
    if not numbers or not low < high:
        raise _fail(name, f"{where} needs finite numbers min < max, got min={low!r}, max={high!r}")
    return float(low), float(high)


def _levels(name: str, where: str, values: Any) -> tuple[str, ...]:
    if not isinstance(values, list) or not values or not all(isinstance(v, (str, int, float)) for v in values):
        raise _fail(name, f"{where} must be a non-empty list of values, got {values!r}")
    levels = tuple(str(v) for v in values)
    if len(set(levels)) != len(levels):
        raise _fail(name, f"{where} lists a value twice: {list(levels)}")
    return levels


def load_schema(path: str | Path) -> Schema:
    """Read and check a schema file; any problem is one `DataError` naming the file, the entry and the fix."""
    path = Path(path).expanduser()
    data, name = _read(path), path.name
    if not isinstance(data, dict):
        raise _fail(name, "the top level must be an object with 'columns', 'default' and/or 'classes'")
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise _fail(name, f"unknown key(s) {unknown}: use {', '.join(_KEYS)}")
    columns = data.get("columns", {})
    if not isinstance(columns, dict):
        raise _fail(name, "'columns' must map column names to {min, max} or {categories}")
    bounds, categories = {}, {}
    for column, entry in columns.items():
        where = f"column {column!r}"
        if not isinstance(entry, dict) or set(entry) not in ({"min", "max"}, {"categories"}):
            raise _fail(name, f"{where} needs either min and max, or categories; got {entry!r}")
        if "categories" in entry:
            categories[str(column)] = _levels(name, f"{where} categories", entry["categories"])
        else:
            bounds[str(column)] = _range(name, where, entry)
    default = data.get("default")
    if default is not None and (not isinstance(default, dict) or set(default) != {"min", "max"}):
        raise _fail(name, f"'default' needs min and max, got {default!r}")
    classes = data.get("classes")
    if classes is not None and (not isinstance(classes, list) or len(classes) < 2):
        raise _fail(name, f"'classes' must list at least two classes (a classifier needs ≥ 2), got {classes!r}")
    return Schema(
        name=name,
        bounds=bounds,
        categories=categories,
        default_bounds=None if default is None else _range(name, "'default'", default),
        classes=None if classes is None else _levels(name, "'classes'", classes),
    )
