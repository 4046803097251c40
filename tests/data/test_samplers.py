"""Tests for ftlight.data.samplers: length-grouped batches, deterministic and sharded."""

import random

import pytest

from ftlight.data.samplers import LengthGroupedBatchSampler
from ftlight.errors import ConfigError

# --- LengthGroupedBatchSampler --------------------------------------------------------------


def lengths_for(n, seed=0):
    return [random.Random(seed + i).randint(1, 500) for i in range(n)]


@pytest.mark.parametrize(("n", "batch_size", "mult"), [(103, 4, 5), (64, 8, 50), (7, 10, 2)])
def test_sampler_every_index_once_and_len(n, batch_size, mult):
    sampler = LengthGroupedBatchSampler(
        lengths_for(n), batch_size, shuffle=True, seed=3, mega_batch_mult=mult
    )
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(n))
    assert len(sampler) == len(batches) == -(-n // batch_size)
    assert sum(len(b) < batch_size for b in batches) == (1 if n % batch_size else 0)


def test_sampler_groups_by_length_within_a_mega_batch():
    lengths = list(range(40))
    random.Random(1).shuffle(lengths)
    sampler = LengthGroupedBatchSampler(lengths, 4, shuffle=True, seed=0, mega_batch_mult=10)
    batches = list(sampler)
    # One mega-batch covers everything, so each batch holds 4 consecutive lengths.
    groups = sorted(sorted(lengths[i] for i in b) for b in batches)
    assert groups == [list(range(k, k + 4)) for k in range(0, 40, 4)]
    # ...and the batch order is shuffled, not longest-first.
    assert [max(lengths[i] for i in b) for b in batches] != sorted(
        (max(lengths[i] for i in b) for b in batches), reverse=True
    )


def test_sampler_mega_batches_sort_descending():
    lengths = lengths_for(30)
    sampler = LengthGroupedBatchSampler(lengths, 3, shuffle=False, seed=0, mega_batch_mult=2)
    batches = list(sampler)
    flat = [i for b in batches for i in b]
    for start in range(0, 30, 6):
        mega = flat[start : start + 6]
        assert sorted(mega) == list(range(start, start + 6))
        assert [lengths[i] for i in mega] == sorted((lengths[i] for i in mega), reverse=True)


def test_sampler_is_deterministic_per_seed_and_epoch():
    def batches(seed, epoch):
        sampler = LengthGroupedBatchSampler(lengths_for(50), 4, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert batches(0, 0) == batches(0, 0)
    assert batches(0, 1) == batches(0, 1)
    assert batches(0, 0) != batches(0, 1)
    assert batches(0, 0) != batches(1, 0)


def test_sampler_drop_last():
    sampler = LengthGroupedBatchSampler(
        lengths_for(23), 5, shuffle=True, seed=0, drop_last=True, mega_batch_mult=2
    )
    batches = list(sampler)
    assert len(sampler) == len(batches) == 4
    assert all(len(b) == 5 for b in batches)
    assert len({i for b in batches for i in b}) == 20


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_distributed_shares(drop_last):
    lengths = lengths_for(45)  # 12 batches of 4 (last has 1): 12 / 5 ranks -> 3 each, padded
    shares = []
    for rank in range(5):
        sampler = LengthGroupedBatchSampler(
            lengths, 4, shuffle=True, seed=7, drop_last=drop_last, num_replicas=5, rank=rank
        )
        sampler.set_epoch(2)
        shares.append(list(sampler))
        assert len(shares[-1]) == len(sampler)
    counts = {len(s) for s in shares}
    assert counts == ({2} if drop_last else {3})
    everything = LengthGroupedBatchSampler(lengths, 4, shuffle=True, seed=7, drop_last=drop_last)
    everything.set_epoch(2)
    all_batches = list(everything)
    taken = [b for share in shares for b in share]
    if drop_last:
        # 11 full batches, trimmed to 10 so 5 ranks get 2 each; no batch is used twice.
        assert len({tuple(b) for b in taken}) == 10
        assert all(b in all_batches for b in taken)
    else:
        # Every batch is used; 3 are repeated so that each rank has 3.
        assert {tuple(b) for b in taken} == {tuple(b) for b in all_batches}
        assert sorted({i for b in taken for i in b}) == list(range(45))
        assert len(taken) == 15


def test_sampler_bad_rank():
    with pytest.raises(ConfigError, match=r"rank=2 must be in \[0, num_replicas=2\)"):
        LengthGroupedBatchSampler([1, 2], 1, shuffle=False, seed=0, num_replicas=2, rank=2)
