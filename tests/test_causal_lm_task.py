"""CausalLMTask: how long generation runs and how answers are scored."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftlight.data.collate import PackCollator, PadCollator
from ftlight.data.encode import encode_sft
from ftlight.data.formats import SFTExample
from ftlight.errors import ConfigError
from ftlight.models.tiny import build_tiny_tokenizer
from ftlight.speed.calls import FastCalls
from ftlight.tasks import CausalLMTask
from ftlight.tasks.calls import ModelCalls
from ftlight.tasks.causal_lm import AUTO_FALLBACK, AUTO_MARGIN


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer("llama")


def test_auto_generation_budget_follows_the_longest_reference(tokenizer) -> None:
    refs = ["short", '{"category": "billing", "priority": "high"}', "mid length"]
    task = CausalLMTask()
    assert task.max_new_tokens == AUTO_FALLBACK  # before references are known
    task.configure(tokenizer, refs)
    longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in refs)
    assert longest == len(refs[1].encode())  # the tiny tokenizer spends one token per byte
    assert task.max_new_tokens == longest + AUTO_MARGIN
    assert task.json_fields is None  # not every reference is a JSON object


def test_a_fixed_generation_budget_is_kept(tokenizer) -> None:
    task = CausalLMTask(max_new_tokens=7)
    task.configure(tokenizer, ["a much longer reference than seven tokens"])
    assert task.max_new_tokens == 7


def test_auto_without_references_falls_back(tokenizer) -> None:
    task = CausalLMTask()
    task.configure(tokenizer, [])
    assert task.max_new_tokens == AUTO_FALLBACK


@pytest.mark.parametrize("bad", [0, -3, "lots", 2.5])
def test_bad_generation_budget_is_a_config_error(bad) -> None:
    with pytest.raises(ConfigError, match="max_new_tokens"):
        CausalLMTask(max_new_tokens=bad)


# -- the training loss -------------------------------------------------------------------


def _batch(
    tokenizer, packed: bool = False, multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    pairs = [
        ("Name the colour: the cat is red.", "red"),
        ("Which is bigger, 3 or 7? Answer in a sentence.", "7 is bigger than 3."),
        ("Translate to French: good morning", "bonjour"),
    ]
    rows = []
    for prompt, answer in pairs:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        enc = encode_sft(SFTExample(messages), tokenizer, None)
        rows.append({"input_ids": enc.input_ids, "labels": enc.labels})
    if packed:
        total = sum(len(r["input_ids"]) for r in rows)
        batch = PackCollator(total, tokenizer.pad_token_id)([rows[:2], rows[2:]])
    else:
        batch = PadCollator(tokenizer.pad_token_id, pad_to_multiple_of=multiple_of)(rows)
    return {k: v for k, v in batch.items() if k != "num_tokens"}


def _fast(task: CausalLMTask) -> CausalLMTask:
    """``task`` calling its model through the speed parts (a module gives every task its run's
    calls; a task alone calls the model plainly)."""
    task.calls = FastCalls()
    return task


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def tiny_lm(tiny_chat_llama):
    folder = tiny_chat_llama
    tok = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa").float()
    return model, tok


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_sliced_loss_equals_the_models_own_loss_and_gradients(tiny_lm, packed: bool) -> None:
    model, tok = tiny_lm
    batch = _batch(tok, packed)
    model.zero_grad()
    reference = model(**batch, use_cache=False).loss
    reference.backward()
    want = _grads(model)

    task = _fast(CausalLMTask())
    model.zero_grad()
    loss = task.training_loss(model, batch)
    loss.backward()
    assert task.calls.sliced_loss is True  # the fast path ran, not the fallback
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)
    got = _grads(model)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "speed-parts"])
def test_padding_to_a_multiple_changes_no_loss_or_gradient(tiny_lm, fast: bool) -> None:
    """``data.pad_to_multiple_of``: the extra padding is masked and unlabelled, so the step
    computes what the batch padded to its longest row does (to summation order)."""
    model, tok = tiny_lm
    results = []
    for multiple_of in (None, 16):
        batch = _batch(tok, multiple_of=multiple_of)
        task = _fast(CausalLMTask()) if fast else CausalLMTask()
        model.zero_grad()
        loss = task.training_loss(model, batch)
        loss.backward()
        results.append((batch["input_ids"].shape[1], loss.detach(), _grads(model)))
    (longest, loss, grads), (padded, loss16, grads16) = results
    assert longest % 16 and padded % 16 == 0 and padded > longest  # the padding is real
    torch.testing.assert_close(loss16, loss, rtol=1e-6, atol=1e-6)
    for name in grads:
        torch.testing.assert_close(grads16[name], grads[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("limit", [None, 1, 40], ids=["one-group", "row-by-row", "groups"])
def test_evaluation_scores_equal_the_models_own_in_any_grouping(
    tiny_lm, monkeypatch, limit: int | None
) -> None:
    import ftlight.speed.calls as calls

    model, tok = tiny_lm
    batch = _batch(tok, packed=False)
    if limit is not None:  # logits budget in positions x vocabulary
        monkeypatch.setattr(calls, "EVAL_LOGITS", limit * model.config.vocab_size)
    task = _fast(CausalLMTask(generate=False))
    metrics = task.metrics()
    with torch.no_grad():
        own = model(**batch, use_cache=False)
        task.update_metrics(metrics, batch, task.evaluation_outputs(model, batch))
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    accuracy = ((own.logits[:, :-1].argmax(-1) == labels) & mask).sum() / mask.sum()
    scores = task.compute_metrics(metrics)
    assert scores["loss"] == pytest.approx(float(own.loss), rel=1e-5)
    assert scores["token_accuracy"] == pytest.approx(float(accuracy), rel=1e-6)


def test_plain_calls_score_as_the_model_does(tiny_lm) -> None:
    """A task alone calls its model plainly (full logits, the model's own loss), and scores
    what the model's own outputs give."""
    model, tok = tiny_lm
    batch = _batch(tok, packed=False)
    task = CausalLMTask(generate=False)
    assert type(task.calls) is ModelCalls
    metrics = task.metrics()
    with torch.no_grad():
        own = model(**batch, use_cache=False)
        outputs = task.evaluation_outputs(model, batch)
        task.update_metrics(metrics, batch, outputs)
        loss = task.training_loss(model, batch)
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    assert outputs.targets.tolist() == labels[mask].tolist()
    assert outputs.rows.tolist() == mask.nonzero()[:, 0].tolist()
    scores = task.compute_metrics(metrics)
    assert scores["loss"] == pytest.approx(float(own.loss), rel=1e-6)
    torch.testing.assert_close(loss, own.loss)


def test_sliced_loss_through_a_peft_wrapper(tiny_lm) -> None:
    from peft import LoraConfig, get_peft_model

    model, tok = tiny_lm
    peft_model = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0)
    )
    batch = _batch(tok)
    task = _fast(CausalLMTask())
    loss = task.training_loss(peft_model, batch)
    assert task.calls.sliced_loss is True
    torch.testing.assert_close(loss, peft_model(**batch, use_cache=False).loss)


class _OwnSlicing(nn.Module):
    """A causal LM whose ``logits_to_keep`` only takes an int (keeps every position here)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, labels=None, use_cache=False,
                position_ids=None, logits_to_keep=0):  # fmt: skip
        return self.inner(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            use_cache=use_cache,
        )


def test_models_that_slice_otherwise_fall_back_to_their_own_loss(tiny_lm) -> None:
    model, tok = tiny_lm
    batch = _batch(tok)
    task = _fast(CausalLMTask())
    loss = task.training_loss(_OwnSlicing(model), batch)
    assert task.calls.sliced_loss is False
    torch.testing.assert_close(loss, model(**batch, use_cache=False).loss)


@pytest.mark.parametrize("share", [False, True], ids=["whole-rows", "shared-opening"])
def test_every_step_projects_in_the_loss_with_the_same_numbers(tiny_lm, share: bool) -> None:
    model, tok = tiny_lm
    batch = _batch(tok)
    model.zero_grad()
    reference = model(**batch, use_cache=False).loss
    reference.backward()
    want = _grads(model)

    task = _fast(CausalLMTask())
    task.calls.whole_rows(training=not share, evaluation=not share)
    for step in range(2):
        model.zero_grad()
        loss = task.training_loss(model, batch)
        loss.backward()
        assert task.calls.head_in_loss is True
        torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6, msg=f"step {step}")
        got = _grads(model)
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)
    assert "forward" not in model.lm_head.__dict__  # the head is itself again


def test_a_model_that_changes_its_heads_output_keeps_the_plain_loss(tiny_lm) -> None:
    model, tok = tiny_lm

    class Scaled(type(model)):  # e.g. logit scaling or soft-capping after the head
        def forward(self, input_ids=None, logits_to_keep=0, **kwargs):
            out = super().forward(input_ids=input_ids, logits_to_keep=logits_to_keep, **kwargs)
            out.logits = out.logits * 0.5
            return out

    scaled = copy.deepcopy(model)
    scaled.__class__ = Scaled
    batch = _batch(tok)
    labels = batch["labels"][:, 1:]
    with torch.no_grad():
        logits = scaled(**batch, use_cache=False).logits[:, :-1]
    want = nn.functional.cross_entropy(logits[labels != -100], labels[labels != -100])
    task = _fast(CausalLMTask())
    for _ in range(2):
        loss = task.training_loss(scaled, batch)
        assert task.calls.head_in_loss is False
        torch.testing.assert_close(loss, want)


def test_a_hooked_head_keeps_the_plain_loss(tiny_lm) -> None:
    model, tok = tiny_lm
    hooked = copy.deepcopy(model)
    hooked.lm_head.register_forward_hook(lambda _m, _i, out: out * 0.5)
    batch = _batch(tok)
    task = _fast(CausalLMTask())
    first = task.training_loss(hooked, batch)
    second = task.training_loss(hooked, batch)
    assert task.calls.head_in_loss is None  # never tried: a hook may change what the head returns
    torch.testing.assert_close(second, first)
