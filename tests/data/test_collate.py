"""Tests for ftlight.data.collate: padding and packing (checked against a real model)."""

import random

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from ftlight.data.collate import PackCollator, PadCollator, pack_rows
from ftlight.errors import ConfigError, DataError

IGNORE = -100

# --- PadCollator ----------------------------------------------------------------------------


def sft_rows():
    return [
        {"input_ids": [1, 2, 3], "labels": [IGNORE, 2, 3]},
        {"input_ids": [4], "labels": [4]},
    ]


def test_pad_right():
    batch = PadCollator(pad_token_id=0)(sft_rows())
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 2, 3], [4, IGNORE, IGNORE]]
    assert all(t.dtype == torch.long for t in batch.values())
    assert set(batch) == {"input_ids", "attention_mask", "labels"}


def test_pad_left_and_multiple_of():
    collate = PadCollator(pad_token_id=9, padding_side="left", pad_to_multiple_of=4, label_pad=-1)
    batch = collate(sft_rows())
    assert batch["input_ids"].tolist() == [[9, 1, 2, 3], [9, 9, 9, 4]]
    assert batch["attention_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    assert batch["labels"].tolist() == [[-1, IGNORE, 2, 3], [-1, -1, -1, 4]]


def test_multiple_of_stops_at_max_length():
    """Rounding up never pads past ``max_length`` (the model's limit may be there); a row
    longer than that keeps its length."""
    rows = [{"input_ids": list(range(1, 10)), "labels": list(range(1, 10))}]
    assert PadCollator(0, pad_to_multiple_of=8)(rows)["input_ids"].shape == (1, 16)
    assert PadCollator(0, pad_to_multiple_of=8, max_length=12)(rows)["input_ids"].shape == (1, 12)
    assert PadCollator(0, pad_to_multiple_of=8, max_length=6)(rows)["input_ids"].shape == (1, 9)


def test_pad_classification_with_token_type_ids():
    rows = [
        {"input_ids": [5, 6], "label": 2, "token_type_ids": [0, 1]},
        {"input_ids": [7, 8, 9], "label": 0, "token_type_ids": [0, 0, 1]},
    ]
    batch = PadCollator(pad_token_id=1)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 1], [7, 8, 9]]
    assert batch["labels"].tolist() == [2, 0]
    assert batch["labels"].shape == (2,)
    assert batch["token_type_ids"].tolist() == [[0, 1, 0], [0, 0, 1]]


def test_pad_bad_settings():
    with pytest.raises(ConfigError, match="padding_side='middle'"):
        PadCollator(pad_token_id=0, padding_side="middle")
    with pytest.raises(ConfigError, match="pad_token_id=None: the tokenizer has no pad token"):
        PadCollator(pad_token_id=None)
    with pytest.raises(ConfigError, match="pad_token_id=None"):
        PackCollator(max_length=8, pad_token_id=None)


# --- pack_rows ------------------------------------------------------------------------------


def test_pack_rows_first_fit_decreasing_exact():
    assert pack_rows([5, 4, 3, 3, 2, 2, 1], max_length=8) == [[0, 2], [1, 3, 6], [4, 5]]
    rows = [{"input_ids": [0] * n} for n in (5, 4, 3, 3, 2, 2, 1)]
    assert pack_rows(rows, max_length=8) == [[0, 2], [1, 3, 6], [4, 5]]


def naive_first_fit_decreasing(lengths, max_length):
    bins, free = [], []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        slot = next((b for b, room in enumerate(free) if room >= lengths[i]), None)
        if slot is None:
            bins.append([])
            free.append(max_length)
            slot = len(bins) - 1
        bins[slot].append(i)
        free[slot] -= lengths[i]
    return bins


def test_pack_rows_matches_naive_ffd_and_covers_every_row():
    rng = random.Random(0)
    lengths = [rng.randint(1, 64) for _ in range(777)]
    bins = pack_rows(lengths, max_length=64)
    assert bins == naive_first_fit_decreasing(lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(777))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)


def test_pack_rows_row_too_long():
    with pytest.raises(DataError, match="row 2 has 9 tokens, more than the packing length 8"):
        pack_rows([3, 9], max_length=8)


# --- PackCollator ---------------------------------------------------------------------------


def test_pack_collator_exact_layout():
    packs = [
        [
            {"input_ids": [1, 2, 3], "labels": [IGNORE, 2, 3]},
            {"input_ids": [4, 5], "labels": [4, 5]},
        ],
        [{"input_ids": [6, 7], "labels": [6, 7]}],
    ]
    batch = PackCollator(max_length=8, pad_token_id=0)(packs)
    assert set(batch) == {"input_ids", "labels", "position_ids", "num_tokens"}
    assert int(batch["num_tokens"]) == 7  # real tokens, padding excluded
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]]
    assert batch["labels"].tolist() == [
        [IGNORE, 2, 3, IGNORE, 5],
        [IGNORE, 7, IGNORE, IGNORE, IGNORE],
    ]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    # The caller's rows are not modified.
    assert packs[0][1]["labels"] == [4, 5]


def test_pack_collator_accepts_a_bare_row_as_a_pack_of_one():
    batch = PackCollator(max_length=8, pad_token_id=0)([{"input_ids": [3, 4], "labels": [3, 4]}])
    assert batch["labels"].tolist() == [[IGNORE, 4]]
    assert batch["position_ids"].tolist() == [[0, 1]]


def test_pack_collator_over_length():
    rows = [{"input_ids": [1] * 5, "labels": [1] * 5}] * 2
    with pytest.raises(DataError, match="a pack holds 10 tokens, more than max_length=8"):
        PackCollator(max_length=8, pad_token_id=0)([rows])


def tiny_llama(attn_implementation):
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=300,
        attn_implementation=attn_implementation,
    )
    return LlamaForCausalLM(config).eval()


def random_rows(count, seed):
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for n in torch.randint(3, 12, (count,), generator=generator).tolist():
        ids = torch.randint(1, 300, (n,), generator=generator).tolist()
        prompt = torch.randint(1, n, (1,), generator=generator).item()
        rows.append({"input_ids": ids, "labels": [IGNORE] * prompt + ids[prompt:]})
    return rows


def token_losses(logits, labels):
    """Summed next-token loss and label count, shifted the way HF causal LMs shift."""
    loss = F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE, reduction="sum")
    return loss.item(), int((labels[1:] != IGNORE).sum())


def packed_and_single_losses(model, rows, packs, batch, **kwargs):
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], use_cache=False, **kwargs).logits
        packed, single = [], []
        for b, pack in enumerate(packs):
            start = 0
            for i in pack:
                n = len(rows[i]["input_ids"])
                loss, count = token_losses(
                    logits[b, start : start + n], batch["labels"][b, start : start + n]
                )
                packed.append((loss, count))
                alone = model(input_ids=torch.tensor([rows[i]["input_ids"]]), use_cache=False)
                single.append(token_losses(alone.logits[0], torch.tensor(rows[i]["labels"])))
                start += n
    return packed, single


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked_loss(attn_implementation):
    model = tiny_llama(attn_implementation)
    rows = random_rows(10, seed=1)
    packs = pack_rows(rows, max_length=24)
    assert any(len(p) >= 3 for p in packs)  # real packing happens
    batch = PackCollator(max_length=24, pad_token_id=0)([[rows[i] for i in p] for p in packs])
    assert (batch["input_ids"] == 0).any()  # and some bins are padded

    packed, single = packed_and_single_losses(
        model, rows, packs, batch, position_ids=batch["position_ids"]
    )
    for (packed_loss, packed_count), (single_loss, single_count) in zip(
        packed, single, strict=True
    ):
        assert packed_count == single_count  # the boundary label was masked, nothing else
        assert packed_loss / packed_count == pytest.approx(single_loss / single_count, abs=1e-5)

    # The model's own loss on the packed batch is the token-weighted mean of unpacked losses.
    with torch.no_grad():
        loss = model(**batch, use_cache=False).loss
    expected = sum(s for s, _ in single) / sum(c for _, c in single)
    assert loss.item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_packing_leaks_without_position_ids_or_with_the_cache_on(attn_implementation):
    """The equality above is not vacuous: the two ways to get packing wrong change the loss."""
    model = tiny_llama(attn_implementation)
    rows = random_rows(10, seed=1)
    packs = pack_rows(rows, max_length=24)
    batch = PackCollator(max_length=24, pad_token_id=0)([[rows[i] for i in p] for p in packs])
    first, second = (len(rows[i]["input_ids"]) for i in packs[0][:2])
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([rows[packs[0][1]]["input_ids"]]), use_cache=False)
        no_positions = model(input_ids=batch["input_ids"], use_cache=False)
        cache_on = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True
        )
    for wrong in (no_positions, cache_on):
        logits = wrong.logits[0, first : first + second]
        assert (logits - alone.logits[0]).abs().max() > 1e-2
