"""What a stage's step function receives: rows with their dataset indices and the epoch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Batch:
    rows: list[Any]
    indices: list[int]
    epoch: int
