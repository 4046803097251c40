"""A batch taken a few rows at a time: groups of rows under a budget, and their inputs."""

from __future__ import annotations

from typing import Any

import torch


def row_groups(counts: list[int], limit: int) -> list[slice]:
    """Consecutive groups of rows whose ``counts`` add up to at most ``limit`` (a row over
    the limit alone)."""
    groups, start, held = [], 0, 0
    for i, count in enumerate(counts):
        if i > start and held + count > limit:
            groups.append(slice(start, i))
            start, held = i, 0
        held += count
    groups.append(slice(start, len(counts)))
    return groups


def rows_of(value: Any, rows: torch.Tensor, width: int, shape: torch.Size) -> Any:
    """``rows`` of a batch input; a per-token one cut to its first ``width`` columns."""
    if not torch.is_tensor(value):
        return value
    if value.shape[:2] == shape:
        return value[rows, :width]
    return value[rows]
