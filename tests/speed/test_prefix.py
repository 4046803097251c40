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
from ftlight.speed.calls import FastCalls
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
        task = _sharing(CausalLMTask(), sharing)
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
        "ftlight.speed.calls.forward_with_shared_prefix",
        lambda *a, **k: calls.append(a[3]) or real(*a, **k),
    )
    grads = []
    for sharing in (False, True):
        task = _sharing(CausalLMTask(), sharing)
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
        task = _sharing(CausalLMTask(generate=False), sharing)
        metrics = task.metrics()
        with torch.no_grad():
            task.update_metrics(metrics, batch, task.evaluation_outputs(model.eval(), batch))
        scores.append(task.compute_metrics(metrics))
    assert scores[1]["loss"] == pytest.approx(scores[0]["loss"], rel=1e-5)
    assert scores[1]["token_accuracy"] == scores[0]["token_accuracy"]


def _sharing(task: CausalLMTask, sharing: bool) -> CausalLMTask:
    """``task`` calling its model through the speed parts, sharing openings or not."""
    task.calls = FastCalls()
    task.calls.whole_rows(training=not sharing, evaluation=not sharing)
    return task


def _eval_batch(tok, tickets=TICKETS) -> dict:
    from ftlight.data.collate import EvalCollator

    task = CausalLMTask()
    rows = []
    for text, answer in tickets:
        messages = [
            {"role": "user", "content": INSTRUCTION + text},
            {"role": "assistant", "content": answer},
        ]
        rows.append(task.encode(SFTExample(messages), tok, None, evaluation=True)[0])
    batch = EvalCollator(PadCollator(tok.pad_token_id))(rows)
    batch.pop("num_tokens", None)
    return batch


MORE_TICKETS = [
    *TICKETS,
    ("I was charged twice for order 12 and nobody answers my mails", '{"category": "billing"}'),
    ("login fails", '{"category": "account"}'),
]


@pytest.mark.parametrize("groups", [None, 2], ids=["one-group", "groups"])
@pytest.mark.parametrize(
    "opening", ["kept-once", "per-row", "not-shared"], ids=lambda o: f"opening-{o}"
)
def test_decoding_continues_from_the_scoring_pass(lm, monkeypatch, opening, groups) -> None:
    """Evaluation's loss pass already ran every prompt (each is the start of its row):
    decoding continues from its keys and values, with the same answers and scores as when it
    encodes the prompts itself."""
    import ftlight.speed.calls as calls
    import ftlight.speed.decode as decode
    from ftlight.speed import cascade

    model, tok = lm
    model = copy.deepcopy(model).eval()
    with torch.no_grad():  # larger random weights: answers that depend on the prompt
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(std=0.3)
    monkeypatch.setattr(cascade, "supports", lambda m: opening == "kept-once")
    if groups:  # a logits budget that splits the batch into groups of rows
        monkeypatch.setattr(calls, "EVAL_LOGITS", 30 * model.config.vocab_size)
    batch = _eval_batch(tok, MORE_TICKETS)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    encoded = []
    real_prompt = decode._prompt
    monkeypatch.setattr(
        decode, "_prompt", lambda *a, **k: encoded.append(1) or real_prompt(*a, **k)
    )
    results = []
    for follows in (False, True):
        task = CausalLMTask(max_new_tokens=10)
        task.configure(tok, batch["references"])
        _sharing(task, opening != "not-shared")
        answers: list[str] = []
        task.generate_text = _recorded(task.generate_text, answers)
        metrics = task.metrics()
        with torch.no_grad():
            outputs = task.evaluation_outputs(model, inputs, generating=follows)
            assert (outputs.prompts is not None) == follows
            task.update_metrics(metrics, batch, outputs, model=model)
        results.append((answers, task.compute_metrics(metrics), task.generated_tokens))
    assert encoded == [1]  # only the pass without the scoring pass's cache encoded prompts
    (plain, plain_scores, plain_tokens), (fused, fused_scores, fused_tokens) = results
    assert fused == plain and len(set(plain)) > 1  # answers differ between prompts
    assert fused_tokens == plain_tokens
    assert fused_scores == pytest.approx(plain_scores, rel=1e-5)


def _recorded(generate_text, answers: list[str]):
    def record(*args):
        texts = generate_text(*args)
        answers.extend(texts)
        return texts

    return record


def test_decoding_encodes_the_prompts_when_they_do_not_start_the_scored_rows(lm) -> None:
    model, tok = lm
    batch = _eval_batch(tok)
    task = _sharing(CausalLMTask(max_new_tokens=4), True)
    task.configure(tok, batch["references"])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    with torch.no_grad():
        outputs = task.evaluation_outputs(model.eval(), inputs, generating=True)
        args = (outputs.predictions, batch["input_ids"])
        prompts = outputs.prompts
        assert prompts.prompted(*args, batch["gen_input_ids"], batch["gen_attention_mask"])
        other = batch["gen_input_ids"].clone()
        other[0, -1] = (other[0, -1] + 1) % model.config.vocab_size  # another last token
        assert prompts.prompted(*args, other, batch["gen_attention_mask"]) is None
        fewer = batch["gen_input_ids"][:-1], batch["gen_attention_mask"][:-1]
        assert prompts.prompted(*args, *fewer) is None


def test_a_reserved_cache_appends_in_place_as_the_plain_cache_does() -> None:
    from transformers import DynamicCache

    torch.manual_seed(0)
    plain, reserved = DynamicCache(), DynamicCache()
    first = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)
    plain.update(*first, 0)
    reserved.update(*first, 0)
    prefix.reserve(reserved, 2)
    buffer = reserved.layers[0].keys.untyped_storage().data_ptr()
    rows = 3
    for step in range(4):  # two within the room reserved, then it grows
        new = torch.randn(rows, 2, 1, 4), torch.randn(rows, 2, 1, 4)
        want, got = plain.update(*new, 0), reserved.update(*new, 0)
        for w, g in zip(want, got, strict=True):
            assert torch.equal(w, g)
        if step < 2:  # written into the same buffer, not copied
            assert reserved.layers[0].keys.untyped_storage().data_ptr() == buffer
        if step == 1:
            plain.batch_select_indices(torch.tensor([0, 2]))
            reserved.batch_select_indices(torch.tensor([0, 2]))
            rows = 2
            buffer = reserved.layers[0].keys.untyped_storage().data_ptr()
    assert reserved.get_seq_length() == plain.get_seq_length() == 9
    assert torch.equal(reserved.layers[0].values, plain.layers[0].values)


def test_a_row_cache_takes_each_group_s_rows_zero_padded_with_room(lm) -> None:
    from transformers import DynamicCache

    model, _ = lm
    layers = model.config.num_hidden_layers
    short, long = DynamicCache(config=model.config), DynamicCache(config=model.config)
    for i in range(layers):
        short.update(torch.ones(2, 1, 3, 4), torch.ones(2, 1, 3, 4), i)
        long.update(torch.full((1, 1, 6, 4), 2.0), torch.full((1, 1, 6, 4), 2.0), i)
    rows = prefix.RowCache(model, rows=3, length=5, room=2)
    rows.add(0, short)
    rows.add(2, long)
    keys = rows.cache.layers[0].keys
    assert keys.shape == (3, 1, 5, 4)  # the longest kept: 5 of the 6 positions
    assert keys[:2, :, :3].eq(1).all() and keys[:2, :, 3:].eq(0).all() and keys[2].eq(2).all()
    buffer = rows.cache.layers[0].keys.untyped_storage().data_ptr()
    rows.cache.update(torch.zeros(3, 1, 2, 4), torch.zeros(3, 1, 2, 4), 0)  # the room
    assert rows.cache.layers[0].keys.untyped_storage().data_ptr() == buffer
    assert rows.cache.get_seq_length() == 7
