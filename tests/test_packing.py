"""Packed and unpacked batches train the same: same loss, same gradients on the same rows."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftlight.data.collate import PackCollator, PadCollator, pack_rows
from ftlight.data.encode import encode_sft
from ftlight.data.formats import SFTExample


def _rows(tokenizer) -> list[dict]:
    pairs = [
        ("Name the colour: the cat is red.", "red"),
        ("Name the colour: a blue bird sings on the roof.", "blue"),
        ("Translate to French: good morning", "bonjour"),
        ("Which is bigger, 3 or 7?", "7 is bigger than 3."),
    ]
    rows = []
    for prompt, answer in pairs:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        enc = encode_sft(SFTExample(messages), tokenizer, None)
        rows.append({"input_ids": enc.input_ids, "labels": enc.labels})
    return rows


def _loss_and_grads(model, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    inputs = {k: v for k, v in batch.items() if k != "num_tokens"}
    out = model(**inputs, use_cache=False)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_packed_batch_matches_padded_batch(tiny_chat_llama: Path) -> None:
    folder = tiny_chat_llama
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa").float()
    rows = _rows(tokenizer)
    padded = PadCollator(tokenizer.pad_token_id)(rows)
    total = sum(len(r["input_ids"]) for r in rows)
    bins = pack_rows(rows, total)
    assert len(bins) == 1  # everything fits one packed row
    # In a packed row the first label of every sequence is dropped (it would be predicted
    # from the previous sequence); drop it in the padded batch too so both count the same tokens.
    for row in rows:
        row["labels"] = [-100, *row["labels"][1:]]
    padded = PadCollator(tokenizer.pad_token_id)(rows)
    packed = PackCollator(total, tokenizer.pad_token_id)([[rows[i] for i in bins[0]]])
    assert int(packed["num_tokens"]) == total == int(padded["attention_mask"].sum())

    loss_pad, grads_pad = _loss_and_grads(model, padded)
    loss_pack, grads_pack = _loss_and_grads(model, packed)
    torch.testing.assert_close(loss_pack, loss_pad, rtol=1e-5, atol=1e-6)
    for name, grad in grads_pad.items():
        torch.testing.assert_close(grads_pack[name], grad, rtol=1e-4, atol=1e-6, msg=name)
