"""The opening every row of a batch shares, run once: same loss, gradients and scores as the
plain pass, on fewer tokens."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftlight.data.collate import PadCollator
from ftlight.data.encode import encode_sft
from ftlight.data.formats import SFTExample
from ftlight.speed import prefix
from ftlight.speed.prefix import shared_prefix_length
from ftlight.tasks import CausalLMTask

INSTRUCTION = "Extract the ticket as JSON with keys category, priority and product.\n\n"
TICKETS = [
    ("my invoice is wrong", '{"category": "billing"}'),
    ("the parcel never came, order 77", '{"category": "shipping", "order": 77}'),
    ("app crashes", '{"category": "technical"}'),
]


@pytest.fixture(scope="module")
def lm(tiny_chat_llama):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_llama, attn_implementation="sdpa")
    return model.float(), AutoTokenizer.from_pretrained(tiny_chat_llama)


def _batch(tok, tickets=TICKETS) -> dict[str, torch.Tensor]:
    rows = []
    for text, answer in tickets:
        messages = [
            {"role": "user", "content": INSTRUCTION + text},
            {"role": "assistant", "content": answer},
        ]
        enc = encode_sft(SFTExample(messages), tok, None)
        rows.append({"input_ids": enc.input_ids, "labels": enc.labels})
    batch = PadCollator(tok.pad_token_id)(rows)
    return {k: v for k, v in batch.items() if k != "num_tokens"}


def _keep(labels: torch.Tensor) -> torch.Tensor:
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    return keep


def test_the_shared_opening_is_found_and_bounded() -> None:
    ids = torch.tensor([[5] * 20 + [1, 2, 3], [5] * 20 + [4, 0, 0], [5] * 20 + [1, 9, 9]])
    mask = torch.ones_like(ids)
    assert shared_prefix_length(ids, mask) == 20
    assert shared_prefix_length(ids, mask, minimum=21) == 0  # not worth a pass
    assert shared_prefix_length(ids[:1], mask[:1]) == 0  # one row: nothing to share
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[1, 17] = True  # a logit wanted inside the common part ends it there
    assert shared_prefix_length(ids, mask, keep) == 17
    padded = mask.clone()
    padded[2, :3] = 0  # left padding: the first columns are not the same tokens
    assert shared_prefix_length(ids, padded) == 0
    same = torch.full((3, 30), 7)
    assert shared_prefix_length(same, torch.ones_like(same)) == 29  # each row keeps one token


def test_training_loss_and_gradients_match_the_plain_pass(lm) -> None:
    model, tok = lm
    model = copy.deepcopy(model).train()
    batch = _batch(tok)
    assert (
        shared_prefix_length(batch["input_ids"], batch["attention_mask"], _keep(batch["labels"]))
        > 16
    )

    results = []
    for sharing in (False, True):
        task = CausalLMTask()
        task.prefix_sharing = sharing
        model.zero_grad()
        loss = task.training_loss(model, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    (plain, plain_grads), (shared, shared_grads) = results
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-6)
    assert shared_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_lora_gradients_flow_through_the_shared_cache(lm, monkeypatch) -> None:
    model, tok = lm
    peft_model = get_peft_model(
        copy.deepcopy(model),
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "k_proj", "v_proj"],
            init_lora_weights=False,
        ),
    )
    batch = _batch(tok)
    calls = []
    real = prefix.forward_with_shared_prefix
    monkeypatch.setattr(
        "ftlight.tasks.causal_lm.forward_with_shared_prefix",
        lambda *a, **k: calls.append(a[3]) or real(*a, **k),
    )
    grads = []
    for sharing in (False, True):
        task = CausalLMTask()
        task.prefix_sharing = sharing
        peft_model.zero_grad()
        task.training_loss(peft_model, batch).backward()
        grads.append(
            {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad}
        )
    assert len(calls) == 1 and calls[0] > 16  # only the sharing pass took the shared route
    for name, grad in grads[0].items():
        assert grad.abs().sum() > 0, name  # k/v adapters of the shared part get gradient too
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("kept_once", [True, False], ids=["opening-once", "opening-per-row"])
def test_evaluation_scores_match_the_plain_pass(lm, monkeypatch, kept_once) -> None:
    from ftlight.speed import cascade

    assert cascade.supports(lm[0])  # a Llama: scoring keeps the opening once by default
    monkeypatch.setattr(cascade, "supports", lambda m: kept_once)
    model, tok = lm
    batch = _batch(tok)
    scores = []
    for sharing in (False, True):
        task = CausalLMTask(generate=False)
        task.prefix_sharing = sharing
        metrics = task.metrics()
        with torch.no_grad():
            task.update_metrics(metrics, batch, task.evaluation_outputs(model.eval(), batch))
        scores.append(task.compute_metrics(metrics))
    assert scores[1]["loss"] == pytest.approx(scores[0]["loss"], rel=1e-5)
    assert scores[1]["token_accuracy"] == scores[0]["token_accuracy"]
