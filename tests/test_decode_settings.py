"""Evaluation decodes as the model says: each ``generation_config`` setting gives, token for
token, the answers of ``model.generate(do_sample=False)`` on each prompt alone, and changes
them from plain argmax."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from ftlight.errors import ConfigError
from ftlight.speed.calls import FastCalls
from ftlight.speed.decode import fast_greedy, greedy_decode
from ftlight.tasks import CausalLMTask
from ftlight.tasks.generation import GreedyAnswers

PREFIX = "System: answer briefly and in JSON.\nUser: "
PROMPTS = [PREFIX + q for q in ["hi", "where is my order 1234?", "refund please", "a longer one"]]
STEPS = 12


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


@pytest.fixture
def model(lm):
    """The tiny model with a fresh copy of its generation_config (each test sets its own)."""
    model, _ = lm
    own = model.generation_config
    model.generation_config = copy.deepcopy(own)
    yield model
    model.generation_config = own


def _batch(tok, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


def _alone(model, ids, mask, eos: list[int] | None, pad: int, n: int = STEPS) -> torch.Tensor:
    """Each prompt through ``model.generate`` alone, padded into one block as decoding lays
    it out; ``eos`` None: the generation_config's own end tokens."""
    answers = []
    for row, keep in zip(ids, mask.bool(), strict=True):
        prompt = row[keep][None]
        ends = {"eos_token_id": eos} if eos is not None else {}
        out = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=pad,
            **ends,
        )
        answers.append(out[0, prompt.shape[1] :])
    width = max(len(a) for a in answers)
    block = torch.full((len(answers), width), pad, dtype=torch.long)
    for i, a in enumerate(answers):
        block[i, : len(a)] = a
    return block


def _differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape != b.shape or not torch.equal(a, b)


def _early_end(plain: torch.Tensor) -> tuple[int, int]:
    """A token row 1 first produces at step k >= 2, and k: an end token that stops it early."""
    row = plain[1].tolist()
    k = next(i for i in range(2, len(row)) if row[i] not in row[:i])
    return row[k], k


def _frequent(plain: torch.Tensor, n: int) -> list[int]:
    counts = torch.bincount(plain.flatten())
    return counts.argsort(descending=True)[:n].tolist()


# each case: the generation_config settings (from the plain answers) and the end tokens
Case = Callable[..., tuple[dict, list[int] | None]]
CASES: dict[str, Case] = {
    "repetition_penalty": lambda plain, eos, widths: ({"repetition_penalty": 3.0}, [eos]),
    "no_repeat_ngram_size": lambda plain, eos, widths: ({"no_repeat_ngram_size": 2}, [eos]),
    "bad_words_ids": lambda plain, eos, widths: (
        {"bad_words_ids": [[int(plain[0, 0])], [int(plain[1, 0]), int(plain[1, 1])]]},
        [eos],
    ),
    "suppress_tokens": lambda plain, eos, widths: ({"suppress_tokens": _frequent(plain, 3)}, [eos]),
    "begin_suppress_tokens": lambda plain, eos, widths: (
        {"begin_suppress_tokens": sorted(set(plain[:, 0].tolist()))},
        [eos],
    ),
    "min_new_tokens": lambda plain, eos, widths: (
        {"min_new_tokens": _early_end(plain)[1] + 3},
        [_early_end(plain)[0]],
    ),
    "min_length": lambda plain, eos, widths: (
        # prompt and answer together, a few tokens past row 1's early end
        {"min_length": int(widths[1]) + _early_end(plain)[1] + 3},
        [_early_end(plain)[0]],
    ),
    "several_eos_ids": lambda plain, eos, widths: (
        {"eos_token_id": [eos, int(plain[0, 2]), _early_end(plain)[0]]},
        None,  # decoding and generate take them from the generation_config
    ),
    "forced_eos_token_id": lambda plain, eos, widths: ({"forced_eos_token_id": 7}, [eos]),
    "sequence_bias": lambda plain, eos, widths: ({"sequence_bias": [[[9], 6.0]]}, [eos]),
    "exponential_decay_length_penalty": lambda plain, eos, widths: (
        {"exponential_decay_length_penalty": (2, 4.0)},
        [_early_end(plain)[0]],
    ),
}


@pytest.mark.parametrize("share_prefix", [True, False], ids=["shared-opening", "whole-rows"])
@pytest.mark.parametrize("setting", list(CASES))
def test_each_setting_decodes_as_generate_does(model, lm, setting: str, share_prefix) -> None:
    _, tok = lm
    ids, mask = _batch(tok, PROMPTS)
    pad, plain_eos = tok.pad_token_id, [tok.eos_token_id]
    plain = greedy_decode(model, ids, mask, STEPS, plain_eos, pad)
    settings, eos = CASES[setting](plain, tok.eos_token_id, mask.sum(1))
    for key, value in settings.items():
        setattr(model.generation_config, key, value)
    want = _alone(model, ids, mask, eos, pad)
    task = _fast(CausalLMTask(max_new_tokens=STEPS))
    task.configure(tok, [])
    if eos is None:  # the task's own end tokens: the tokenizer's and the generation_config's
        got_text = task.generate_text(model, ids, mask)
        assert got_text == tok.batch_decode(want, skip_special_tokens=True)
        got = fast_greedy(GreedyAnswers(), model, ids, mask, STEPS, settings["eos_token_id"], pad)
    else:
        answers = GreedyAnswers()
        got = fast_greedy(answers, model, ids, mask, STEPS, eos, pad) if share_prefix else None
        if not share_prefix:  # every row encoded whole, no shared opening
            from ftlight.tasks.generation import decoding_config, processors

            config = decoding_config(model, {})
            rows = [
                (row[keep], processors(config, int(keep.sum()), STEPS, eos))
                for row, keep in zip(ids, mask.bool(), strict=True)
            ]
            got = greedy_decode(
                model, ids, mask, STEPS, eos, pad, share_prefix=False, processors=rows
            )
    assert torch.equal(got, want)
    # the setting is strong enough to change the answers: the test can fail
    plain_then = greedy_decode(model, ids, mask, STEPS, eos or settings["eos_token_id"], pad)
    assert _differ(got, plain_then if setting not in ("several_eos_ids",) else plain)


def test_a_forced_first_token_after_a_one_token_prompt(model, lm) -> None:
    """``forced_bos_token_id`` applies where the prompt is one token long, as in generate."""
    _, tok = lm
    ids, mask = _batch(tok, ["x", "y", "z"])
    eos, pad = [tok.eos_token_id], tok.pad_token_id
    plain = greedy_decode(model, ids, mask, STEPS, eos, pad)
    model.generation_config.forced_bos_token_id = 11
    got = fast_greedy(GreedyAnswers(), model, ids, mask, STEPS, eos, pad)
    assert torch.equal(got, _alone(model, ids, mask, eos, pad))
    assert got[:, 0].tolist() == [11, 11, 11] and _differ(got, plain)


def test_settings_together_from_the_scoring_pass(model, lm, monkeypatch) -> None:
    """A Qwen-like config through evaluation's own path: the loss pass's keys, values and
    scores are continued (the prompts are not encoded again), with generate's answers."""
    import ftlight.speed.decode as decode
    from ftlight.data.collate import EvalCollator, PadCollator
    from ftlight.data.formats import SFTExample

    _, tok = lm
    config = model.generation_config
    config.repetition_penalty, config.no_repeat_ngram_size = 1.8, 3
    config.suppress_tokens = [5]
    task = CausalLMTask(max_new_tokens=STEPS)
    rows = []
    for text in PROMPTS:
        turns = [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]
        rows.append(task.encode(SFTExample(turns), tok, None, evaluation=True)[0])
    batch = EvalCollator(PadCollator(tok.pad_token_id))(rows)
    task.configure(tok, batch["references"])
    _fast(task)
    encoded = []
    real = decode._prompt
    monkeypatch.setattr(decode, "_prompt", lambda *a, **k: encoded.append(1) or real(*a, **k))
    seen: list[list[str]] = []
    generate_text = task.generate_text
    monkeypatch.setattr(task, "generate_text", _recorded(generate_text, seen))
    metrics = task.metrics()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    with torch.no_grad():
        outputs = task.evaluation_outputs(model, inputs, generating=True)
        assert outputs.prompts is not None and outputs.prompts.scores is not None
        task.update_metrics(metrics, batch, outputs, model=model)
    assert encoded == []  # decoding continued from the scoring pass
    ids, mask = batch["gen_input_ids"], batch["gen_attention_mask"]
    want = _alone(model, ids, mask, [tok.eos_token_id], tok.pad_token_id)
    assert seen == [tok.batch_decode(want, skip_special_tokens=True)]
    plain = greedy_decode(model, ids, mask, STEPS, [tok.eos_token_id], tok.pad_token_id)
    assert _differ(want, plain)


def test_a_run_override_beats_the_models_setting(model, lm) -> None:
    _, tok = lm
    ids, mask = _batch(tok, PROMPTS)
    eos, pad = [tok.eos_token_id], tok.pad_token_id
    model.generation_config.repetition_penalty = 3.0
    with_penalty = _alone(model, ids, mask, eos, pad)
    overrides = GreedyAnswers({"repetition_penalty": 1.0, "no_repeat_ngram_size": None})
    got = fast_greedy(overrides, model, ids, mask, STEPS, eos, pad)
    assert model.generation_config.repetition_penalty == 3.0  # the model's config untouched
    model.generation_config.repetition_penalty = 1.0
    assert torch.equal(got, _alone(model, ids, mask, eos, pad))
    assert _differ(got, with_penalty)


def test_beam_search_goes_to_generate_and_says_why_once(model, lm, caplog) -> None:
    _, tok = lm
    ids, mask = _batch(tok, PROMPTS[:2])
    eos, pad = [tok.eos_token_id], tok.pad_token_id
    model.generation_config.num_beams = 3
    want = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=STEPS,
        eos_token_id=eos,
        pad_token_id=pad,
        do_sample=False,
    )[:, ids.shape[1] :]
    answers = GreedyAnswers()
    with caplog.at_level(logging.INFO, logger="ftlight"):
        first = fast_greedy(answers, model, ids, mask, STEPS, eos, pad)
        second = fast_greedy(answers, model, ids, mask, STEPS, eos, pad)
    assert torch.equal(first, want) and torch.equal(second, want)
    notes = [r.getMessage() for r in caplog.records if "model.generate" in r.getMessage()]
    assert len(notes) == 1 and "num_beams=3" in notes[0]
    assert _differ(want, greedy_decode(model, ids, mask, STEPS, eos, pad))


@pytest.mark.parametrize(
    ("generation", "needle"),
    [
        ({"top_k": 5}, "top_k: not a decoding setting"),
        ({"repetition_penalty": 0}, "repetition_penalty=0: expected a number"),
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size=-1: expected a whole number"),
        ({"bad_words_ids": [1, 2]}, "bad_words_ids=[1, 2]: expected a list of token-id lists"),
        ({"suppress_tokens": "5"}, "suppress_tokens='5': expected a list of token ids"),
    ],
)
def test_bad_overrides_are_config_errors(generation, needle) -> None:
    with pytest.raises(ConfigError, match="^" + _escaped(f"task.generation.{needle}")):
        CausalLMTask(generation=generation)


def test_overrides_without_generation_are_refused() -> None:
    with pytest.raises(ConfigError, match="task.generate=false: nothing is decoded"):
        CausalLMTask(generate=False, generation={"repetition_penalty": 1.2})
    CausalLMTask(generate=False, generation={"repetition_penalty": None})  # unset: fine


def test_a_bad_override_is_refused_on_the_command_line(tmp_path, ftlight_cache) -> None:
    from ftlight.testing import BASE, SETUPS

    run = tmp_path / "run"
    args = [*BASE, *SETUPS["tiny-llama"], f"hydra.run.dir={run}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FTLIGHT_CACHE": str(ftlight_cache)}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "ftlight", *args, "task.generation.repetition_penalty=-2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "task.generation.repetition_penalty=-2: expected a number > 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (run / "metrics.json").exists()


def test_a_default_config_applies_no_processor(model, lm, monkeypatch) -> None:
    """A generation_config without settings decodes by plain argmax: no per-row work."""
    import ftlight.speed.decode as decode

    _, tok = lm
    monkeypatch.setattr(decode, "_processed", lambda *a: pytest.fail("processed plain argmax"))
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id)
    ids, mask = _batch(tok, PROMPTS)
    eos, pad = [tok.eos_token_id], tok.pad_token_id
    got = fast_greedy(GreedyAnswers(), model, ids, mask, STEPS, eos, pad)
    assert torch.equal(got, _alone(model, ids, mask, [tok.eos_token_id], tok.pad_token_id))


def _fast(task: CausalLMTask) -> CausalLMTask:
    """``task`` calling its model through the speed parts (as a run's module gives it)."""
    task.calls = FastCalls()
    return task


def _recorded(generate_text, seen: list[list[str]]):
    def record(*args):
        seen.append(generate_text(*args))
        return seen[-1]

    return record


def _escaped(text: str) -> str:
    import re

    return re.escape(text)


@pytest.mark.parametrize("strategy", ["lora", "full"])
def test_the_export_decodes_as_the_run_evaluated(tmp_path, strategy: str) -> None:
    """task.generation overrides reach the exported generation_config.json (model/ and, for an
    adapter, the merged model), so generate() after export applies what evaluation applied."""
    from transformers import GenerationConfig

    from ftlight.testing import QUICK_FIT, compose_config, train_with_probe

    cfg = compose_config(
        [
            f"strategy={strategy}",
            *QUICK_FIT,
            "trainer.max_steps=2",
            "task.generation.repetition_penalty=1.3",
            "task.generation.no_repeat_ngram_size=3",
        ],
        tmp_path,
        "tiny-llama",
    )
    train_with_probe(cfg)
    saved = GenerationConfig.from_pretrained(tmp_path / "model")
    assert saved.repetition_penalty == 1.3 and saved.no_repeat_ngram_size == 3


def test_past_a_sliding_window_evaluation_decodes_with_generate(caplog) -> None:
    """A model with a sliding attention window (Gemma 3's zoo model: 64 tokens), prompts of 60
    to 70 tokens with a shared opening, left-padded in one batch: the answers are those of
    ``generate`` on each prompt alone. The fast decoder's cache holds padding between a prompt
    and its answer, which a window would count, so past the window the pass goes to
    ``model.generate``."""
    from ftlight.speed.cascade import attention_window
    from ftlight.testing.zoo import zoo_model

    folder = zoo_model("gemma3").build()
    model = AutoModelForCausalLM.from_pretrained(folder).float().eval()
    torch.manual_seed(1)
    window = attention_window(model)
    assert window == 64
    llama = zoo_model("llama").build()
    assert attention_window(AutoModelForCausalLM.from_pretrained(llama)) is None
    opening = torch.randint(5, 200, (40,))  # shared: the decoder encodes it once
    prompts = [torch.cat([opening, torch.randint(5, 200, (n,))]) for n in (20, 30, 26, 27, 21)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :], mask[i, width - len(p) :] = p, 1
    steps = 8
    with torch.no_grad():
        alone = [
            model.generate(
                input_ids=p[None], max_new_tokens=steps, do_sample=False, eos_token_id=None
            )[0, len(p) :]
            for p in prompts
        ]
        fast = greedy_decode(model, ids, mask, steps, [], 0)
    # the fast decoder alone gets some of them wrong past the window: the case is a real one
    assert any(not torch.equal(f[:steps], a) for f, a in zip(fast, alone, strict=True))
    with caplog.at_level(logging.INFO, logger="ftlight"):
        got = fast_greedy(GreedyAnswers(), model, ids, mask, steps, [], 0)
    for row, want in zip(got, alone, strict=True):
        assert torch.equal(row[:steps], want)
    assert any("sliding attention window (64 tokens)" in r.getMessage() for r in caplog.records)
    # within the window the fast decoder runs, and agrees
    short = fast_greedy(GreedyAnswers(), model, ids[:, -40:], mask[:, -40:], steps, [], 0)
    for row, p in zip(short, prompts, strict=True):
        want = model.generate(
            input_ids=p[-40:][None], max_new_tokens=steps, do_sample=False, eos_token_id=None
        )[0, 40:]
        assert torch.equal(row[:steps], want)
