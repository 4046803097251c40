"""Tests for ftlight.data.encode with locally built byte-level tokenizers."""

import logging
from pathlib import Path

import pytest
from tokenizers import processors
from transformers import PreTrainedTokenizerFast

from ftlight.data.encode import (
    IGNORE_INDEX,
    encode_classification,
    encode_sft,
    prompt_and_reference,
)
from ftlight.data.formats import ClassificationExample, SFTExample
from ftlight.errors import DataError


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def labelled_spans(tokenizer, encoded):
    """Decode each run of consecutive labelled tokens."""
    spans, current = [], []
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        if label == IGNORE_INDEX:
            if current:
                spans.append(current)
            current = []
        else:
            assert label == token
            current.append(token)
    if current:
        spans.append(current)
    return [tokenizer.decode(span) for span in spans]


# --- with a chat template -------------------------------------------------------------------


def test_chat_template_labels_exactly_the_reply_and_end_of_turn(chatml_tokenizer):
    messages = [user("Hi"), assistant("Hello there!")]
    encoded = encode_sft(SFTExample(messages), chatml_tokenizer, max_length=None)
    rendered = chatml_tokenizer.apply_chat_template(messages, tokenize=False)
    assert chatml_tokenizer.decode(encoded.input_ids) == rendered
    assert rendered.endswith("Hello there!<|im_end|>\n")
    # The newline after <|im_end|> is not labelled; <|im_end|> (= eos) is, so no eos is appended.
    assert labelled_spans(chatml_tokenizer, encoded) == ["Hello there!<|im_end|>"]
    assert encoded.input_ids[-2:] == [
        chatml_tokenizer.eos_token_id,
        chatml_tokenizer("\n")["input_ids"][0],
    ]
    assert encoded.labels[-1] == IGNORE_INDEX
    assert encoded.truncated is False


def test_chat_template_labels_every_assistant_turn(chatml_tokenizer):
    messages = [
        {"role": "system", "content": "Be kind."},
        user("Héllo"),
        assistant("Bonjour 🙂"),
        user("2+2?"),
        {"role": "tool", "content": "4"},
        assistant("It is 4."),
    ]
    encoded = encode_sft(SFTExample(messages), chatml_tokenizer, max_length=None)
    assert labelled_spans(chatml_tokenizer, encoded) == [
        "Bonjour 🙂<|im_end|>",
        "It is 4.<|im_end|>",
    ]
    assert len(encoded.input_ids) == len(encoded.labels)


def test_chat_template_with_bos_does_not_double_bos(byte_level, chatml_template):
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=byte_level(
            ["<s>", "<|im_start|>", "<|im_end|>"],
            [processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 256)])],
        ),
        bos_token="<s>",
        eos_token="<|im_end|>",
    )
    tokenizer.chat_template = "{{ bos_token }}" + chatml_template
    assert tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id  # it normally adds bos
    encoded = encode_sft(SFTExample([user("a"), assistant("b")]), tokenizer, max_length=None)
    assert encoded.input_ids.count(tokenizer.bos_token_id) == 1
    assert encoded.input_ids[0] == tokenizer.bos_token_id
    assert labelled_spans(tokenizer, encoded) == ["b<|im_end|>"]


def test_chat_template_appends_eos_when_the_turn_does_not_end_with_it(byte_level, chatml_template):
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=byte_level(["<|im_start|>", "<|im_end|>", "<|endoftext|>"]),
        eos_token="<|endoftext|>",
    )
    tokenizer.chat_template = chatml_template
    encoded = encode_sft(SFTExample([user("a"), assistant("b")]), tokenizer, max_length=None)
    assert encoded.input_ids[-1] == tokenizer.eos_token_id
    assert encoded.labels[-1] == tokenizer.eos_token_id
    # Labelled in one run: "b<|im_end|>", the template's "\n" after it, the appended eos; the
    # evaluation reference is the reply (a run of its own for the eos would leave it empty).
    assert labelled_spans(tokenizer, encoded) == ["b<|im_end|>\n<|endoftext|>"]
    reference = prompt_and_reference(encoded.input_ids, encoded.labels, tokenizer)["reference"]
    assert reference == "b"


def test_template_that_rewrites_earlier_turns_labels_only_the_last(chatml_tokenizer, caplog):
    chatml_tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' and not loop.last %}[hidden]"
        "{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    messages = [user("a"), assistant("first"), user("b"), assistant("second")]
    with caplog.at_level(logging.WARNING, logger="ftlight.data.encode"):
        encoded = encode_sft(SFTExample(messages), chatml_tokenizer, max_length=None)
    assert labelled_spans(chatml_tokenizer, encoded) == ["second<|im_end|>"]
    assert "[hidden]" in chatml_tokenizer.decode(encoded.input_ids)
    assert "only the last assistant turn is labelled" in caplog.text


def test_template_that_is_not_prefix_consistent(chatml_tokenizer):
    chatml_tokenizer.chat_template = (
        "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    with pytest.raises(DataError, match="not prefix-consistent"):
        encode_sft(SFTExample([user("a"), assistant("b")]), chatml_tokenizer, max_length=None)


def test_template_that_rejects_the_conversation(chatml_tokenizer, chatml_template):
    chatml_tokenizer.chat_template = (
        "{% if messages[0]['role'] == 'tool' %}{{ raise_exception('no tools') }}{% endif %}"
        + chatml_template
    )
    example = SFTExample([{"role": "tool", "content": "x"}, assistant("b")])
    with pytest.raises(DataError, match="chat template rejected .*no tools"):
        encode_sft(example, chatml_tokenizer, max_length=None)


def test_chat_truncation_keeps_the_head(chatml_tokenizer):
    example = SFTExample([user("Hi"), assistant("abcdefghij")])
    full = encode_sft(example, chatml_tokenizer, max_length=None)
    # The tail is "abcdefghij" <|im_end|> "\n"; cutting 4 tokens leaves "abcdefgh".
    cut = encode_sft(example, chatml_tokenizer, max_length=len(full.input_ids) - 4)
    assert cut.truncated is True
    assert cut.input_ids == full.input_ids[:-4]
    assert cut.labels == full.labels[:-4]
    assert labelled_spans(chatml_tokenizer, cut) == ["abcdefgh"]
    exact = encode_sft(example, chatml_tokenizer, max_length=len(full.input_ids))
    assert exact.truncated is False


def test_chat_truncation_inside_the_prompt_returns_none(chatml_tokenizer):
    example = SFTExample([user("a long question " * 5), assistant("yes")])
    full = encode_sft(example, chatml_tokenizer, max_length=None)
    prompt_length = next(i for i, label in enumerate(full.labels) if label != IGNORE_INDEX)
    assert chatml_tokenizer.decode(full.input_ids[prompt_length]) == "y"
    assert encode_sft(example, chatml_tokenizer, max_length=prompt_length) is None
    assert encode_sft(example, chatml_tokenizer, max_length=prompt_length + 1) is not None


def test_bad_max_length(chatml_tokenizer):
    with pytest.raises(DataError, match="max_length=0 must be a positive integer"):
        encode_sft(SFTExample([user("a"), assistant("b")]), chatml_tokenizer, max_length=0)


# --- without a chat template ----------------------------------------------------------------


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_raw_prompt_completion_exact_ids(plain_tokenizer):
    bos, eos = plain_tokenizer.bos_token_id, plain_tokenizer.eos_token_id
    example = SFTExample([user("2+2="), assistant(" 4")], raw=True)
    encoded = encode_sft(example, plain_tokenizer, max_length=None)
    prompt, reply = ids(plain_tokenizer, "2+2="), ids(plain_tokenizer, " 4")
    assert encoded.input_ids == [bos, *prompt, *reply, eos]
    assert encoded.labels == [IGNORE_INDEX] * (1 + len(prompt)) + [*reply, eos]


def test_raw_ignores_a_chat_template_and_adds_no_bos_when_tokenizer_does_not(chatml_tokenizer):
    example = SFTExample([user("p"), assistant("c")], raw=True)
    encoded = encode_sft(example, chatml_tokenizer, max_length=None)
    assert chatml_tokenizer.decode(encoded.input_ids) == "pc<|im_end|>"
    assert labelled_spans(chatml_tokenizer, encoded) == ["c<|im_end|>"]


def test_fallback_layout_without_template(plain_tokenizer):
    messages = [
        {"role": "system", "content": "Sys"},
        user("Hi"),
        assistant("Hello"),
        user("More"),
        assistant("Ok"),
    ]
    encoded = encode_sft(SFTExample(messages), plain_tokenizer, max_length=None)
    assert plain_tokenizer.decode(encoded.input_ids) == (
        "<s>Sys\n\n### Instruction:\nHi\n\n### Response:\nHello</s>"
        "### Instruction:\nMore\n\n### Response:\nOk</s>"
    )
    assert labelled_spans(plain_tokenizer, encoded) == ["Hello</s>", "Ok</s>"]


def test_no_template_truncation_and_none(plain_tokenizer):
    example = SFTExample([user("abc"), assistant("defg")], raw=True)
    # <s> a b c | d e f g </s>
    cut = encode_sft(example, plain_tokenizer, max_length=6)
    assert cut.truncated is True
    assert plain_tokenizer.decode(cut.input_ids) == "<s>abcde"
    assert labelled_spans(plain_tokenizer, cut) == ["de"]
    assert encode_sft(example, plain_tokenizer, max_length=4) is None


def test_no_eos_token_is_an_error(byte_level):
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=byte_level(["<pad>"]), pad_token="<pad>")
    with pytest.raises(DataError, match="the tokenizer has no eos_token"):
        encode_sft(SFTExample([user("a"), assistant("b")], raw=True), tokenizer, max_length=None)


# --- classification -------------------------------------------------------------------------


def test_classification_single_text(cls_tokenizer):
    encoded = encode_classification(
        ClassificationExample(text="hey", label="pos"), cls_tokenizer, label_id=1, max_length=None
    )
    assert encoded.input_ids == [256, *ids(cls_tokenizer, "hey"), 257]
    assert encoded.token_type_ids == [0] * 5
    assert encoded.label == 1
    assert encoded.truncated is False


def test_classification_pair_token_types(cls_tokenizer):
    example = ClassificationExample(text="ab", label="x", text_pair="cde")
    encoded = encode_classification(example, cls_tokenizer, label_id=2, max_length=8)
    assert encoded.input_ids == [
        256,
        *ids(cls_tokenizer, "ab"),
        257,
        *ids(cls_tokenizer, "cde"),
        257,
    ]
    assert encoded.token_type_ids == [0, 0, 0, 0, 1, 1, 1, 1]
    assert encoded.truncated is False


def test_classification_pair_truncation(cls_tokenizer):
    example = ClassificationExample(text="abcdef", label="x", text_pair="gh")
    encoded = encode_classification(example, cls_tokenizer, label_id=0, max_length=7)
    assert encoded.truncated is True
    assert len(encoded.input_ids) == 7
    # longest_first trims the longer text; both texts and all special tokens stay.
    assert cls_tokenizer.decode(encoded.input_ids) == "<s>ab</s>gh</s>"
    assert encoded.token_type_ids == [0, 0, 0, 0, 1, 1, 1]


def test_classification_without_token_type_ids(plain_tokenizer):
    encoded = encode_classification(
        ClassificationExample(text="x" * 50, label=0), plain_tokenizer, label_id=0, max_length=None
    )
    assert encoded.token_type_ids is None
    assert len(encoded.input_ids) == 51
    assert encoded.truncated is False


@pytest.mark.parametrize("max_length", [None, 512, 16])
def test_classification_truncation_counts_only_rows_that_lose_tokens(
    cls_tokenizer, max_length, caplog
):
    """The data statistics (logged, and written to metrics.json) count exactly the rows longer
    than data.max_length."""
    from ftlight.data.sources import local_files
    from ftlight.tasks import ClassificationTask

    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    data = local_files(
        train_path=str(fixtures / "reviews_train.csv"),
        val_path=str(fixtures / "reviews_val.tsv"),
        format="text_label",
        max_length=max_length,
        cache_tokenized=False,
    )
    data.bind(cls_tokenizer, ClassificationTask())
    with caplog.at_level(logging.WARNING, logger="ftlight.data"):
        data.prepare()
    texts = [r["text"] for r in data.load_records()["train"][1]]
    lengths = [len(cls_tokenizer(t)["input_ids"]) for t in texts]
    longer = sum(max_length is not None and n > max_length for n in lengths)
    assert data.stats["train"] == {"rows": len(texts), "truncated": longer, "dropped": 0}
    assert longer == {None: 0, 512: 0, 16: 12}[max_length]
    if longer:
        assert f"train: {longer} of {len(texts)} rows longer than data.max_length=16" in caplog.text
        assert "dropped" not in caplog.text  # classification rows are never dropped
    else:
        assert "truncated" not in caplog.text


# --- turns not trained, tool calls, templates that never finish -----------------------------

TOOL_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\nTools: ' + (tools | tojson) + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message.tool_calls %}{% for call in message.tool_calls %}"
    "{{ '<tool_call>' + (call.function | tojson) + '</tool_call>' }}{% endfor %}"
    "{% else %}{{ message['content'] }}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CALL = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}
TOOL_CHAT = [
    user("Weather in Oslo?"),
    assistant(""),
    {"role": "tool", "content": "rain"},
    assistant("It rains."),
]


@pytest.mark.parametrize("layout", ["template", "plain"])
def test_weight_zero_turns_stay_in_the_prompt_but_are_not_learned(
    layout, chatml_tokenizer, plain_tokenizer
):
    tokenizer = chatml_tokenizer if layout == "template" else plain_tokenizer
    end = "<|im_end|>" if layout == "template" else "</s>"
    messages = [user("a"), assistant("bad answer"), user("b"), assistant("good answer")]
    encoded = encode_sft(SFTExample(messages, untrained=(1,)), tokenizer, max_length=None)
    assert labelled_spans(tokenizer, encoded) == [f"good answer{end}"]
    assert "bad answer" in tokenizer.decode(encoded.input_ids)
    everything = encode_sft(SFTExample(messages), tokenizer, max_length=None)
    assert labelled_spans(tokenizer, everything) == [f"bad answer{end}", f"good answer{end}"]


def test_tool_calls_and_tools_are_rendered_and_the_call_is_learned(chatml_tokenizer):
    chatml_tokenizer.chat_template = TOOL_TEMPLATE
    tools = [{"type": "function", "function": {"name": "weather"}}]
    example = SFTExample(TOOL_CHAT, tool_calls={1: [CALL]}, tools=tools)
    encoded = encode_sft(example, chatml_tokenizer, max_length=None)
    text = chatml_tokenizer.decode(encoded.input_ids)
    assert text.startswith('<|im_start|>system\nTools: [{"type": "function", "function": {"na')
    assert labelled_spans(chatml_tokenizer, encoded) == [
        '<tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call><|im_end|>',
        "It rains.<|im_end|>",
    ]


def test_tool_calls_are_refused_by_a_template_without_tool_support(chatml_tokenizer):
    chatml_tokenizer.name_or_path = "chatml-model"
    example = SFTExample(TOOL_CHAT, tool_calls={1: [CALL]})
    with pytest.raises(DataError) as err:
        encode_sft(example, chatml_tokenizer, max_length=None)
    assert str(err.value).startswith(
        "message 2 is a tool call, but the chat template of 'chatml-model' has no tool-call support"
    )
    assert "trained as an empty reply" in str(err.value)


def test_tool_calls_are_refused_without_a_chat_template(plain_tokenizer):
    example = SFTExample(TOOL_CHAT, tool_calls={1: [CALL]})
    with pytest.raises(DataError, match="message 2 is a tool call, .* has no chat template"):
        encode_sft(example, plain_tokenizer, max_length=None)


@pytest.mark.parametrize(
    "loop",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for i in range(100000) %}{% for j in range(100000) %}.{% endfor %}{% endfor %}",
    ],
)
def test_a_template_that_loops_ten_billion_times_fails_within_the_limit(
    loop, chatml_tokenizer, monkeypatch
):
    import time

    from ftlight.data import template

    monkeypatch.setattr(template, "TIME_LIMIT_S", 0.5)
    chatml_tokenizer.chat_template = loop + chatml_tokenizer.chat_template
    chatml_tokenizer.name_or_path = "slow-model"
    started = time.monotonic()
    with pytest.raises(DataError) as err:
        encode_sft(SFTExample([user("a"), assistant("b")]), chatml_tokenizer, max_length=None)
    assert time.monotonic() - started < 5
    assert str(err.value).startswith(
        "the chat template of 'slow-model' did not finish rendering a 2-message conversation "
        "within the limit of 0.5 s"
    )


def test_the_time_limit_holds_outside_the_main_thread_too(chatml_tokenizer, monkeypatch):
    import threading

    from ftlight.data import template

    monkeypatch.setattr(template, "TIME_LIMIT_S", 0.5)
    chatml_tokenizer.chat_template = (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    )
    caught = []

    def run():
        try:
            template.render(chatml_tokenizer, [user("a")])
        except DataError as err:
            caught.append(str(err))

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive()
    assert caught and "within the limit of 0.5 s" in caught[0]


def test_an_alarm_set_before_a_render_is_given_back(chatml_tokenizer):
    import signal

    signal.setitimer(signal.ITIMER_REAL, 100)
    try:
        encode_sft(SFTExample([user("a"), assistant("b")]), chatml_tokenizer, max_length=None)
        left, _ = signal.getitimer(signal.ITIMER_REAL)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    assert 90 < left <= 100
