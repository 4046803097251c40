"""Evaluation's decoding: the same tokens as greedy ``generate``, less work; LoRA merged for
scoring and put back exactly."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftlight.speed.decode import _shared_prefix, can_decode, greedy_decode
from ftlight.tasks.causal_lm import _answer_tokens
from ftlight_lora.merge import merged_lora

PREFIX = "System: answer briefly and in JSON.\nUser: "
QUESTIONS = ["hi", "where is my order 1234?", "refund please", "a much longer question here"]


@pytest.fixture(scope="module")
def lm(tiny_chat_llama):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_llama, attn_implementation="sdpa")
    tok = AutoTokenizer.from_pretrained(tiny_chat_llama)
    with torch.no_grad():  # larger random weights: answers that depend on the prompt
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(std=0.3)
    return model.float().eval(), tok


def _batch(tok, texts: list[str], side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        cols = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[i, cols] = torch.tensor(r)
        mask[i, cols] = 1
    return ids, mask


def _generate(model, ids, mask, eos: list[int], pad: int, n: int) -> torch.Tensor:
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    return out[:, ids.shape[1] :]


@pytest.mark.parametrize("share_prefix", [True, False])
def test_same_tokens_as_greedy_generate(lm, share_prefix: bool) -> None:
    model, tok = lm
    ids, mask = _batch(tok, [PREFIX + q for q in QUESTIONS])
    eos = [tok.eos_token_id]
    expected = _generate(model, ids, mask, eos, tok.pad_token_id, 12)
    got = greedy_decode(model, ids, mask, 12, eos, tok.pad_token_id, share_prefix=share_prefix)
    assert torch.equal(got, expected)


def test_rows_that_end_early_are_dropped_and_padded_like_generate(lm) -> None:
    model, tok = lm
    ids, mask = _batch(tok, [PREFIX + q for q in QUESTIONS])
    free = _generate(model, ids, mask, [tok.eos_token_id], tok.pad_token_id, 12)
    # end at a token row 1 first produces at step k >= 1: that row stops there, the others
    # go on (unless they produce it too), exactly as generate stops them
    row = free[1].tolist()
    k = next(i for i in range(1, len(row)) if row[i] not in row[:i])
    end = row[k]
    expected = _generate(model, ids, mask, [end], tok.pad_token_id, 12)
    got = greedy_decode(model, ids, mask, 12, [end], tok.pad_token_id)
    assert torch.equal(got, expected)
    assert int(got[1, k]) == end and bool((got[1, k + 1 :] == tok.pad_token_id).all())
    assert _answer_tokens(got, [end], tok.pad_token_id) < got.numel()


def test_right_padded_prompts_decode_like_left_padded(lm) -> None:
    model, tok = lm
    texts = [PREFIX + q for q in QUESTIONS]
    left = greedy_decode(model, *_batch(tok, texts, "left"), 8, [tok.eos_token_id], 0)
    right = greedy_decode(model, *_batch(tok, texts, "right"), 8, [tok.eos_token_id], 0)
    assert torch.equal(left, right)


def test_the_shared_prefix_leaves_every_row_a_token() -> None:
    rows = [torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 3, 4, 5]), torch.tensor([1, 2, 9])]
    assert _shared_prefix(rows) == 2
    same = [torch.tensor([7, 8, 9]), torch.tensor([7, 8, 9])]
    assert _shared_prefix(same) == 2  # the last token of the shortest stays its own


def test_answer_tokens_count_each_row_up_to_its_end() -> None:
    new = torch.tensor([[5, 6, 2, 0, 0], [5, 2, 0, 0, 0], [5, 6, 7, 8, 9]])
    assert _answer_tokens(new, [2], 0) == 3 + 2 + 5
    assert _answer_tokens(new[:, :0], [2], 0) == 0


def test_encoder_models_use_generate(tiny_chat_llama) -> None:
    from transformers import BertConfig, BertModel

    assert not can_decode(
        BertModel(
            BertConfig(
                hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8
            )
        )
    )


def _lora(model, **kwargs):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], **kwargs)
    peft_model = get_peft_model(model, config)
    torch.manual_seed(1)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)  # a trained adapter: B is no longer zero
    return peft_model.eval()


def test_merged_lora_scores_the_same_and_restores_every_weight(tiny_chat_llama) -> None:
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_chat_llama).float()
    model = _lora(base)
    ids = torch.arange(3, 40).reshape(1, -1)
    params = {name: (p, p.detach().clone()) for name, p in model.named_parameters()}
    # subtracting the fold again would not give every weight back: the test needs the fix-ups
    assert any(_subtraction_misses(layer) for layer in _lora_layers(model))
    pointers = [layer.get_base_layer().weight.data_ptr() for layer in _lora_layers(model)]
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        with merged_lora(model) as n:
            merged = model(input_ids=ids).logits
            assert n == 3 * model.config.num_hidden_layers
            assert all(layer.merged for layer in _lora_layers(model))
            folded = [layer.get_base_layer().weight for layer in _lora_layers(model)]
            assert [w.data_ptr() for w in folded] == pointers  # in place: no copy
        again = model(input_ids=ids).logits
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)
    assert torch.equal(again, unmerged)
    assert not any(layer.merged for layer in _lora_layers(model))
    for name, p in model.named_parameters():
        original, value = params[name]
        assert p is original and torch.equal(p, value), name  # same object, same bits


def test_an_untrained_adapter_is_skipped_without_copying_weights(tiny_chat_llama) -> None:
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_chat_llama).float(),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]),
    )  # B = 0: the adapters add nothing yet
    ids = torch.arange(3, 40).reshape(1, -1)
    weights = [layer.get_base_layer().weight for layer in _lora_layers(model)]
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        with merged_lora(model) as n:
            assert n == len(weights) and all(layer.merged for layer in _lora_layers(model))
            assert [layer.get_base_layer().weight for layer in _lora_layers(model)] == weights
            skipped = model(input_ids=ids).logits
    assert torch.equal(skipped, unmerged)  # the branch added exact zeros
    assert not any(layer.merged for layer in _lora_layers(model))


def test_merged_lora_is_undone_when_the_block_fails(tiny_chat_llama) -> None:
    model = _lora(AutoModelForCausalLM.from_pretrained(tiny_chat_llama).float())
    weights = [layer.get_base_layer().weight for layer in _lora_layers(model)]
    bits = [w.detach().clone() for w in weights]
    with pytest.raises(RuntimeError), merged_lora(model):
        assert not torch.equal(weights[0], bits[0])
        raise RuntimeError("evaluation failed")
    assert [layer.get_base_layer().weight for layer in _lora_layers(model)] == weights
    assert all(torch.equal(w, b) for w, b in zip(weights, bits, strict=True))
    assert not any(layer.merged for layer in _lora_layers(model))


def test_trained_adapters_over_bf16_weights_stay_unmerged(tiny_chat_llama) -> None:
    """Frozen weights kept in bf16 (``installed.frozen_cast``): folding would round most of
    the adapter's update away, so their trained adapters keep running beside the weights."""
    model = _lora(AutoModelForCausalLM.from_pretrained(tiny_chat_llama).float())
    layers = _lora_layers(model)
    for layer in layers[:2]:
        base = layer.get_base_layer()
        base.weight = torch.nn.Parameter(base.weight.detach().bfloat16(), requires_grad=False)
    bits = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.arange(3, 30).reshape(1, -1)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        unmerged = model(input_ids=ids).logits.float()
        with merged_lora(model) as n:
            assert n == len(layers) - 2
            assert [layer.merged for layer in layers[:2]] == [False, False]
            merged = model(input_ids=ids).logits.float()
    torch.testing.assert_close(merged, unmerged, rtol=0.05, atol=0.05)
    for name, p in model.named_parameters():
        assert p.dtype == bits[name].dtype and torch.equal(p, bits[name]), name


def test_a_tied_weight_is_folded_into_a_copy(tiny_chat_llama) -> None:
    """An adapted head tied to the embedding: the embedding keeps reading the original."""
    base = AutoModelForCausalLM.from_pretrained(tiny_chat_llama).float()
    base.lm_head.weight = base.model.embed_tokens.weight  # tie them
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["lm_head", "q_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    model.eval()
    embedding = model.get_input_embeddings().weight
    bits = embedding.detach().clone()
    head = model.base_model.model.lm_head  # the LoRA layer around the tied head
    ids = torch.arange(3, 30).reshape(1, -1)
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        with merged_lora(model) as n:
            assert n == 1 + model.config.num_hidden_layers
            assert torch.equal(embedding, bits)  # the embedding did not take the head's fold
            assert head.get_base_layer().weight is not embedding
            merged = model(input_ids=ids).logits
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)
    assert head.get_base_layer().weight is embedding and torch.equal(embedding, bits)


def test_an_adapter_changed_while_merged_is_reported(tiny_chat_llama, caplog) -> None:
    model = _lora(AutoModelForCausalLM.from_pretrained(tiny_chat_llama).float())
    layer = _lora_layers(model)[0]
    with merged_lora(model), torch.no_grad():
        layer.lora_B["default"].weight.mul_(3)
    assert "changed while merged" in caplog.text


def _subtraction_misses(layer) -> bool:
    """Whether (W + delta) - delta differs from W somewhere in this layer."""
    weight = layer.get_base_layer().weight.detach()
    delta = layer.get_delta_weight("default")
    back = ((weight.float() + delta).to(weight.dtype).float() - delta).to(weight.dtype)
    return not torch.equal(back, weight)


def test_adapters_with_a_bias_stay_unmerged(tiny_chat_llama) -> None:
    """``lora_bias``: B has a bias the weight fold would leave out."""
    model = _lora(AutoModelForCausalLM.from_pretrained(tiny_chat_llama).float(), lora_bias=True)
    ids = torch.arange(3, 30).reshape(1, -1)
    with torch.no_grad():
        for layer in _lora_layers(model):
            torch.nn.init.normal_(layer.lora_B["default"].bias, std=0.05)
        unmerged = model(input_ids=ids).logits
        with merged_lora(model) as n:
            assert n == 0
            assert torch.equal(model(input_ids=ids).logits, unmerged)


def test_dora_layers_stay_unmerged(tiny_chat_llama) -> None:
    model = _lora(AutoModelForCausalLM.from_pretrained(tiny_chat_llama).float(), use_dora=True)
    with merged_lora(model) as n:
        assert n == 0


def _lora_layers(model):
    from peft.tuners.lora import Linear

    return [m for m in model.modules() if isinstance(m, Linear)]


def test_scoring_passes_run_merged_and_training_does_not(compose, tmp_path) -> None:
    """Scoring skips the untrained adapters (before training) and folds the trained ones
    into the weights in place, putting them back exactly; training never merges."""
    import lightning as L

    from ftlight.build import build_run

    seen: list[tuple[str, bool]] = []

    class Watch(L.Callback):
        def on_validation_batch_start(self, trainer, module, *args) -> None:
            seen.append(("eval", all(layer.merged for layer in _lora_layers(module.model))))

        def on_train_batch_start(self, trainer, module, *args) -> None:
            seen.append(("train", any(layer.merged for layer in _lora_layers(module.model))))

    run = build_run(compose(["trainer.max_steps=2"], tmp_path, "causal_lm"), [Watch()])
    run.evaluate("validation")  # applies the strategy first
    weights = dict(run.module.model.named_parameters())
    run.trainer.fit(run.module, datamodule=run.data)
    trained = {n: p.detach().clone() for n, p in weights.items()}
    run.evaluate("validation")
    # fit's own validation merges too
    assert seen == [("eval", True), ("train", False), ("train", False)] + [("eval", True)] * 2
    after = dict(run.module.model.named_parameters())
    assert all(after[n] is p for n, p in weights.items())  # the same parameter objects
    assert all(torch.equal(after[n], v) for n, v in trained.items())  # and the same bits


def test_evaluation_decodes_with_its_own_loop(lm, monkeypatch) -> None:
    """The model's cache argument is found under either name ``transformers`` has used, so
    evaluation never falls back to ``generate`` on a decoder-only model."""
    from ftlight.speed import cascade
    from ftlight.speed.calls import FastCalls
    from ftlight.tasks import CausalLMTask

    model, tok = lm
    assert can_decode(model)
    assert cascade.supports(model)  # a Llama: the opening is kept once when decoding
    monkeypatch.setattr(model, "generate", lambda *a, **k: pytest.fail("fell back to generate"))
    task = CausalLMTask(max_new_tokens=5)
    task.calls = FastCalls()
    task.configure(tok, ["ok"])
    ids, mask = _batch(tok, [PREFIX + q for q in QUESTIONS])
    assert len(task.generate_text(model, ids, mask)) == len(QUESTIONS)


@pytest.mark.parametrize("grad", [True, False], ids=["recorded", "in-place"])
def test_shared_attention_equals_attention_over_the_repeated_opening(grad: bool) -> None:
    from types import SimpleNamespace

    from ftlight.speed import cascade

    torch.manual_seed(0)
    rows, heads, kv_heads, q, own, shared, dim = 3, 4, 2, 5, 5, 6, 8
    query = torch.randn(rows, heads, q, dim)
    keys, values = torch.randn(rows, kv_heads, own, dim), torch.randn(rows, kv_heads, own, dim)
    opening = [(torch.randn(1, kv_heads, shared, dim), torch.randn(1, kv_heads, shared, dim))]
    allowed = torch.ones(q, own, dtype=torch.bool).tril()[None, None].repeat(rows, 1, 1, 1)
    allowed[1, ..., :2] = False  # row 1 is left-padded by two tokens
    token = cascade._SHARED.set(opening)
    try:
        with torch.set_grad_enabled(grad):
            got, _ = cascade.shared_attention(
                SimpleNamespace(layer_idx=0), query, keys, values, allowed, scaling=0.3
            )
    finally:
        cascade._SHARED.reset(token)
    full_k = torch.cat([opening[0][0].expand(rows, -1, -1, -1), keys], dim=2)
    full_v = torch.cat([opening[0][1].expand(rows, -1, -1, -1), values], dim=2)
    full_mask = torch.cat([torch.ones(rows, 1, q, shared, dtype=torch.bool), allowed], dim=-1)
    want = torch.nn.functional.scaled_dot_product_attention(
        query,
        full_k.repeat_interleave(heads // kv_heads, dim=1),
        full_v.repeat_interleave(heads // kv_heads, dim=1),
        attn_mask=full_mask,
        scale=0.3,
    )
    torch.testing.assert_close(got, want.transpose(1, 2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kept_once", [True, False], ids=["opening-once", "opening-per-row"])
def test_the_opening_kept_once_gives_generates_tokens(lm, monkeypatch, kept_once: bool) -> None:
    from ftlight.speed import cascade

    model, tok = lm
    entered = []
    real = cascade.attend_to_shared_prefix
    monkeypatch.setattr(cascade, "supports", lambda m: kept_once)
    monkeypatch.setattr(
        cascade, "attend_to_shared_prefix", lambda m, layers: entered.append(1) or real(m, layers)
    )
    ids, mask = _batch(tok, [PREFIX + q for q in QUESTIONS])
    eos = [tok.eos_token_id]
    expected = _generate(model, ids, mask, eos, tok.pad_token_id, 12)
    got = greedy_decode(model, ids, mask, 12, eos, tok.pad_token_id)
    assert bool(entered) == kept_once  # the prompts and then the steps attend to it
    assert torch.equal(got, expected)
    assert model.config._attn_implementation == "sdpa"  # put back after decoding


def test_processors_need_the_prompts_scores(lm) -> None:
    """A scoring pass that kept only each prompt's argmax cannot start processed decoding."""
    from transformers.generation import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    from ftlight.speed.decode import Prompted, _prompt

    model, tok = lm
    ids, mask = _batch(tok, [PREFIX + q for q in QUESTIONS[:2]])
    encoded = _prompt(model, ids, mask, True, tok.pad_token_id)
    assert encoded.scores is not None and encoded.scores.dtype == torch.float32
    assert torch.equal(encoded.scores.argmax(-1), encoded.first)
    argmax_only = Prompted(encoded.cache, encoded.valid, encoded.positions, encoded.first)
    rows = [
        (row[keep], LogitsProcessorList([RepetitionPenaltyLogitsProcessor(2.0)]))
        for row, keep in zip(ids, mask.bool(), strict=True)
    ]
    with pytest.raises(ValueError, match="processors need the prompts' scores"):
        greedy_decode(
            model,
            ids,
            mask,
            4,
            [tok.eos_token_id],
            tok.pad_token_id,
            prompted=argmax_only,
            processors=rows,
        )
