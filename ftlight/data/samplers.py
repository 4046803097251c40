"""Which rows go in which batch, and in what order: length-grouped or shuffled batches,
sharded across ranks, with a skip for resuming mid-epoch."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from ftlight.errors import ConfigError


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar-length rows in shuffled order, deterministic per seed and epoch."""

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool,
        seed: int,
        drop_last: bool = False,
        mega_batch_mult: int = 50,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if batch_size < 1 or mega_batch_mult < 1:
            raise ConfigError(
                f"batch_size={batch_size} and mega_batch_mult={mega_batch_mult} must be >= 1."
            )
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ConfigError(f"rank={rank} must be in [0, num_replicas={num_replicas}).")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.mega_batch_mult = mega_batch_mult
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use a different (but reproducible) order for this epoch."""
        self.epoch = epoch

    def _num_batches(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __len__(self) -> int:
        """Number of batches this rank yields per epoch."""
        total = self._num_batches()
        if self.drop_last:
            return total // self.num_replicas
        return math.ceil(total / self.num_replicas)

    def all_batches(self) -> list[list[int]]:
        """Every batch of this epoch for all ranks, before the per-rank split."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        n = len(self.lengths)
        if self.shuffle:
            indices = torch.randperm(n, generator=generator).tolist()
        else:
            indices = list(range(n))
        mega = self.batch_size * self.mega_batch_mult
        batches: list[list[int]] = []
        for start in range(0, n, mega):
            group = sorted(indices[start : start + mega], key=lambda i: -self.lengths[i])
            batches += [
                group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)
            ]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle and batches:
            order = torch.randperm(len(batches), generator=generator).tolist()
            batches = [batches[i] for i in order]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        """Yield this rank's batches: every num_replicas-th batch starting at rank."""
        batches = self.all_batches()
        per_rank = len(self)
        needed = per_rank * self.num_replicas
        if batches and needed > len(batches):
            # Repeat batches from the start so every rank runs the same number of steps.
            batches += [batches[i % len(batches)] for i in range(needed - len(batches))]
        yield from batches[:needed][self.rank :: self.num_replicas]


class ResumableLoader(DataLoader):
    """A DataLoader whose position in the epoch goes into checkpoints (exact mid-epoch resume).

    Lightning saves ``state_dict()`` of a stateful training loader with each checkpoint and
    hands it back on resume; the batch order is a pure function of (seed, epoch), so skipping
    the batches already trained reproduces the uninterrupted run.
    """

    def __init__(self, *args: Any, progress: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._progress = progress

    def state_dict(self) -> dict[str, int]:
        """How many batches of the current epoch were trained."""
        return {"batches_done": self._progress()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Skip the batches already trained when the epoch's iteration restarts."""
        self.batch_sampler.skip_next(int(state.get("batches_done", 0)))


class SkippingBatches(torch.utils.data.Sampler):
    """Wraps a batch sampler so that one iteration can start part-way through the epoch."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._skip = 0

    def skip_next(self, n: int) -> None:
        """Leave out the first ``n`` batches of the next iteration (none if ``n`` >= epoch)."""
        self._skip = n if n < len(self.inner) else 0

    def set_epoch(self, epoch: int) -> None:
        """Forward to the wrapped sampler."""
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __iter__(self):
        skip, self._skip = self._skip, 0
        for i, batch in enumerate(self.inner):
            if i >= skip:
                yield batch

    def __len__(self) -> int:
        return len(self.inner)


class ShuffledBatches(torch.utils.data.Sampler):
    """Plain shuffled batches (seed + epoch), sharded across ranks; used without grouping."""

    def __init__(self, n: int, batch_size: int, seed: int, world: int, rank: int) -> None:
        self.n, self.batch_size, self.seed, self.world, self.rank = n, batch_size, seed, world, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle differently each epoch."""
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        order = list(range(self.n))
        random.Random(self.seed + self.epoch).shuffle(order)
        batches = [order[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        per_rank = -(-len(batches) // self.world)
        batches += batches[: per_rank * self.world - len(batches)]
        return batches[self.rank :: self.world]

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:
        batches = math.ceil(self.n / self.batch_size)
        return math.ceil(batches / self.world)
