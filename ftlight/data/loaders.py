"""Encoded rows as batches: length-grouped or packed for training, in order for evaluation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from ftlight.data.collate import EvalCollator, PackCollator, PadCollator, pack_rows
from ftlight.data.samplers import (
    LengthGroupedBatchSampler,
    ResumableLoader,
    ShuffledBatches,
    SkippingBatches,
)
from ftlight.errors import ConfigError


def train_loader(
    rows: list[dict[str, Any]],
    pad_id: int | None,
    packing: bool,
    max_length: int | None,
    batch_size: int,
    group_by_length: bool,
    seed: int,
    world: int,
    rank: int,
    num_workers: int,
    progress: Callable[[], int],
    pad_to_multiple_of: int | None = None,
    pad_limit: int | None = None,
) -> DataLoader:
    """Length-grouped (or packed) batches with dynamic padding, sharded across ranks.

    ``packing`` packs rows into ``max_length`` tokens; ``progress`` gives the batches already
    done, which a resumed run skips; ``pad_to_multiple_of`` rounds each padded batch's length
    up (not past ``pad_limit``: ``max_length`` or the model's positions), so that the steps
    take a few shapes rather than one per length."""
    if packing:
        if not max_length:
            raise ConfigError("data.packing=true needs data.max_length (the packed row size)")
        bins = pack_rows(rows, max_length)
        items: list[Any] = [[rows[i] for i in b] for b in bins]
        lengths = [sum(len(r["input_ids"]) for r in b) for b in items]
        collate: Any = PackCollator(max_length, pad_id)
    else:
        items = rows
        lengths = [len(r["input_ids"]) for r in rows]
        collate = PadCollator(pad_id, pad_to_multiple_of=pad_to_multiple_of, max_length=pad_limit)
    if group_by_length:
        sampler: Any = LengthGroupedBatchSampler(
            lengths,
            batch_size,
            shuffle=True,
            seed=seed,
            num_replicas=world,
            rank=rank,
        )
    else:
        sampler = ShuffledBatches(len(items), batch_size, seed, world, rank)
    return ResumableLoader(
        items,
        batch_sampler=SkippingBatches(sampler),
        collate_fn=collate,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        progress=progress,
        # its own generator: creating an iterator must not draw from the global RNG, or a
        # resumed run's dropout masks would shift against the uninterrupted run's
        generator=torch.Generator().manual_seed(seed),
    )


def eval_loader(
    rows: list[dict[str, Any]],
    pad_id: int | None,
    batch_size: int,
    seed: int,
    world: int,
    num_workers: int,
) -> DataLoader:
    """Unshuffled batches with prompts for generation, split across ranks when there are
    several."""
    sampler = DistributedSampler(rows, shuffle=False) if world > 1 else None
    return DataLoader(
        rows,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=EvalCollator(PadCollator(pad_id)),
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
