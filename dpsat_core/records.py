"""Typed results that round-trip through JSON (the store's analyses table, the CLI)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, TypeVar

R = TypeVar("R", bound="JsonRecord")


class JsonRecord:
    """Mixin for frozen dataclasses of plain fields: `to_dict()` and `from_dict()`."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        return cls(**data)
