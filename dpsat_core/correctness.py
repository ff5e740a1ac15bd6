"""Which test examples a model got right, packed one bit per example: what pairs two runs exactly in a comparison.

A run keeps its final model's per-example correctness (`RunSummary.test_correct`) so a comparison can count
the test examples two paired models disagree on (McNemar's b + c) instead of bounding it from their accuracies.
The text form is base64 of the bits, example 0 in the first byte's highest bit, the last byte padded with zeros.
"""

from __future__ import annotations

import base64
from typing import Iterable


def pack_correct(correct: Iterable[bool]) -> str:
    """The per-example correctness as base64 text (1 bit an example)."""
    bits = "".join("1" if c else "0" for c in correct)
    pad = -len(bits) % 8
    size = (len(bits) + pad) // 8
    return base64.b64encode(int(bits + "0" * pad or "0", 2).to_bytes(size, "big")).decode("ascii")


def _as_int(packed: str, n: int) -> int:
    data = base64.b64decode(packed.encode("ascii"), validate=True)
    if len(data) != (n + 7) // 8:
        raise ValueError(f"packed correctness holds {len(data)} bytes, not the {(n + 7) // 8} of {n} examples")
    return int.from_bytes(data, "big")


def unpack_correct(packed: str, n: int) -> list[bool]:
    """The `n` booleans `pack_correct` packed."""
    bits = format(_as_int(packed, n), "b").zfill((n + 7) // 8 * 8) if n else ""
    return [b == "1" for b in bits[:n]]


def count_correct(packed: str, n: int) -> int:
    """How many of the `n` examples were right."""
    return _as_int(packed, n).bit_count()


def discordant(a: str, b: str, n: int) -> int:
    """How many of `n` examples exactly one of two models got right (McNemar's b + c)."""
    return (_as_int(a, n) ^ _as_int(b, n)).bit_count()
