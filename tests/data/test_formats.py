"""Tests for ftlight.data.formats: each format on good and malformed rows."""

import json

import pytest

from ftlight.data.formats import (
    FORMATS,
    Alpaca,
    Chat,
    ClassificationExample,
    PromptCompletion,
    SFTExample,
    TextLabel,
    field_names,
    get_format,
)
from ftlight.errors import ConfigError, DataError

WHERE = "train.csv row 7"


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# --- registry -------------------------------------------------------------------------------


def test_registry_names_and_example_types():
    assert {name: cls.example_type for name, cls in FORMATS.items()} == {
        "alpaca": SFTExample,
        "chat": SFTExample,
        "prompt_completion": SFTExample,
        "text_label": ClassificationExample,
    }


def test_get_format_passes_field_names():
    fmt = get_format("alpaca", instruction_field="question", output_field="answer")
    assert isinstance(fmt, Alpaca)
    example = fmt.parse({"question": "Q?", "answer": "A."}, WHERE)
    assert example.messages == [user("Q?"), assistant("A.")]


def test_get_format_unknown_name_lists_available():
    with pytest.raises(ConfigError) as err:
        get_format("sharegpt")
    assert "'sharegpt' is not a known format" in str(err.value)
    assert "alpaca, chat, prompt_completion, text_label" in str(err.value)


def test_get_format_unknown_setting_lists_accepted():
    with pytest.raises(ConfigError) as err:
        get_format("prompt_completion", text_field="x")
    assert str(err.value).startswith(
        "data.fields.text_field=x does not apply to data.format=prompt_completion, which reads "
        "data.fields.prompt_field, data.fields.completion_field"
    )


def test_null_settings_keep_the_default_columns():
    """The data config declares every format's settings as null; those are ignored."""
    fmt = get_format("text_label", text_field="review", instruction_field=None, label_field=None)
    example = fmt.parse({"review": "ok", "label": "pos"}, "row 1")
    assert (example.text, example.label) == ("ok", "pos")
    assert field_names("text_label") == ["text_field", "label_field", "text_pair_field"]


# --- alpaca ---------------------------------------------------------------------------------


def test_alpaca_with_input_and_system():
    record = {"instruction": "Translate.", "input": "Bonjour", "output": "Hello", "system": "S"}
    assert Alpaca().parse(record, WHERE) == SFTExample(
        messages=[
            {"role": "system", "content": "S"},
            user("Translate.\n\nBonjour"),
            assistant("Hello"),
        ]
    )


@pytest.mark.parametrize("extra", [{}, {"input": ""}, {"input": None}, {"input": float("nan")}])
def test_alpaca_without_input(extra):
    example = Alpaca().parse({"instruction": "Hi", "output": "Hello", **extra}, WHERE)
    assert example.messages == [user("Hi"), assistant("Hello")]
    assert example.raw is False


def test_alpaca_numbers_become_text():
    example = Alpaca().parse({"instruction": "2+2?", "input": 3, "output": 4}, WHERE)
    assert example.messages == [user("2+2?\n\n3"), assistant("4")]


def test_alpaca_missing_field_message_names_field_row_fields_and_fix():
    with pytest.raises(DataError) as err:
        Alpaca().parse({"prompt": "p", "completion": "c"}, WHERE)
    message = str(err.value)
    assert message.startswith("train.csv row 7: has no field 'instruction'")
    assert "The row has fields ['completion', 'prompt']" in message
    assert "set data.format=prompt_completion" in message
    assert "data.fields.instruction_field=<column>" in message


@pytest.mark.parametrize("output", ["", "   ", None, float("nan")])
def test_alpaca_empty_output(output):
    with pytest.raises(DataError, match="field 'output' is empty|has no field 'output'"):
        Alpaca().parse({"instruction": "Hi", "output": output}, WHERE)


def test_alpaca_non_text_value():
    with pytest.raises(DataError, match=r"field 'output' \(output\) is a list, expected text"):
        Alpaca().parse({"instruction": "Hi", "output": ["a"]}, WHERE)


# --- chat -----------------------------------------------------------------------------------


def test_chat_openai_messages():
    record = {
        "messages": [
            {"role": "System", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ]
    }
    assert Chat().parse(record, WHERE).messages == [
        {"role": "system", "content": "Be brief."},
        user("Hi"),
        assistant("Hello"),
    ]


def test_chat_sharegpt_conversations_and_role_aliases():
    record = {
        "conversations": [
            {"from": "human", "value": "a"},
            {"from": "gpt", "value": "b"},
            {"from": "HUMAN", "value": "c"},
            {"from": "model", "value": "d"},
            {"from": "user", "value": "e"},
            {"from": "bot", "value": "f"},
            {"from": "user", "value": "g"},
            {"from": "ChatGPT", "value": "h"},
        ]
    }
    roles = [m["role"] for m in Chat().parse(record, WHERE).messages]
    assert roles == ["user", "assistant"] * 4


def test_chat_tool_roles_in_the_middle():
    record = {
        "messages": [
            user("weather?"),
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
            {"role": "function", "content": "sunny"},
            {"role": "ipython", "content": 21},
            assistant("It is sunny."),
        ]
    }
    messages = Chat().parse(record, WHERE).messages
    assert messages == [
        user("weather?"),
        assistant(""),
        {"role": "tool", "content": "sunny"},
        {"role": "tool", "content": "21"},
        assistant("It is sunny."),
    ]


def test_chat_content_parts_are_joined():
    record = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "c"}]},
        ]
    }
    assert Chat().parse(record, WHERE).messages == [user("a\nb"), assistant("c")]


def test_chat_image_part_is_rejected():
    record = {"messages": [{"role": "user", "content": [{"type": "image_url"}]}, assistant("x")]}
    with pytest.raises(DataError, match="message 1 has a content part of type 'image_url'"):
        Chat().parse(record, WHERE)


def test_chat_messages_as_json_string_from_csv():
    record = {"messages": json.dumps([user("hi"), assistant("yo")])}
    assert Chat().parse(record, WHERE).messages == [user("hi"), assistant("yo")]


def test_chat_messages_bad_json_string():
    with pytest.raises(DataError, match="field 'messages' is text but not valid JSON"):
        Chat().parse({"messages": "[{'role': 'user'}]"}, WHERE)


def test_chat_custom_field_name():
    record = {"dialog": [user("a"), assistant("b")]}
    assert Chat(messages_field="dialog").parse(record, WHERE).messages == [
        user("a"),
        assistant("b"),
    ]


def test_chat_unknown_role_lists_accepted():
    record = {"messages": [{"role": "narrator", "content": "x"}, assistant("y")]}
    with pytest.raises(DataError) as err:
        Chat().parse(record, WHERE)
    message = str(err.value)
    assert "train.csv row 7: message 1 has role 'narrator'" in message
    assert "system, developer, user, human, assistant, gpt, bot, model, chatgpt" in message


def test_chat_trailing_user_turn():
    record = {"messages": [user("a"), assistant("b"), user("c")]}
    with pytest.raises(DataError, match=r"ends with a 'user' message \(message 3\)"):
        Chat().parse(record, WHERE)


def test_chat_without_assistant_content():
    record = {"messages": [user("a"), assistant("  ")]}
    with pytest.raises(DataError, match="no assistant message with content"):
        Chat().parse(record, WHERE)


@pytest.mark.parametrize("last", ["", "  \n"])
def test_chat_with_an_empty_final_reply(last):
    """An earlier reply has content, the scored one is empty: an empty reference would match
    any answer."""
    record = {"messages": [user("a"), assistant("b"), user("c"), assistant(last)]}
    with pytest.raises(DataError) as err:
        Chat().parse(record, WHERE)
    assert str(err.value).startswith(f"{WHERE}: the final assistant message (message 4) is empty")
    assert "Write the reply or drop the row" in str(err.value)


def test_chat_missing_field_suggests_format():
    with pytest.raises(DataError) as err:
        Chat().parse({"instruction": "a", "output": "b"}, WHERE)
    assert "has no field 'messages'" in str(err.value)
    assert "set data.format=alpaca" in str(err.value)


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "empty list"),
        ({"role": "user"}, "is a dict, expected a list of messages"),
        ([user("a"), "b"], "message 2 is a str, expected an object"),
        ([{"speaker": "a", "text": "b"}], r"message 1 has keys \['speaker', 'text'\]"),
        ([user("a"), {"role": "assistant", "content": {"x": 1}}], "message 2 content is a dict"),
    ],
)
def test_chat_malformed(messages, match):
    with pytest.raises(DataError, match=match):
        Chat().parse({"messages": messages}, WHERE)


# --- prompt_completion ----------------------------------------------------------------------


def test_prompt_completion_is_raw():
    example = PromptCompletion().parse({"prompt": "2+2=", "completion": " 4"}, WHERE)
    assert example == SFTExample(messages=[user("2+2="), assistant(" 4")], raw=True)


def test_prompt_completion_field_mapping_and_missing():
    fmt = PromptCompletion(prompt_field="q", completion_field="a")
    assert fmt.parse({"q": "x", "a": "y"}, WHERE).messages == [user("x"), assistant("y")]
    with pytest.raises(DataError, match="has no field 'a'.*data.fields.completion_field=<column>"):
        fmt.parse({"q": "x"}, WHERE)


# --- text_label -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "expected"),
    [(2, 2), (0, 0), (" pos ", "pos"), ("3", "3"), (1.0, 1), (True, 1)],
)
def test_text_label_labels(label, expected):
    example = TextLabel().parse({"text": "great", "label": label}, WHERE)
    assert example == ClassificationExample(text="great", label=expected)
    assert type(example.label) is type(expected)


@pytest.mark.parametrize("label", [None, "", "  ", float("nan")])
def test_text_label_missing_label(label):
    with pytest.raises(DataError, match="label"):
        TextLabel().parse({"text": "great", "label": label}, WHERE)


def test_text_label_fractional_label():
    with pytest.raises(DataError, match="label 0.5 in field 'label' is not a class"):
        TextLabel().parse({"text": "t", "label": 0.5}, WHERE)


def test_text_label_pair_and_field_names():
    fmt = get_format(
        "text_label", text_field="premise", text_pair_field="hypothesis", label_field="gold"
    )
    record = {"premise": "A dog runs.", "hypothesis": "An animal moves.", "gold": "entailment"}
    assert fmt.parse(record, WHERE) == ClassificationExample(
        text="A dog runs.", label="entailment", text_pair="An animal moves."
    )
    with pytest.raises(DataError, match="has no field 'hypothesis'"):
        fmt.parse({"premise": "a", "gold": "x"}, WHERE)


def test_text_label_missing_text_names_row():
    with pytest.raises(DataError, match=r"^train\.csv row 7: has no field 'text'"):
        TextLabel().parse({"sentence": "a", "label": 1}, WHERE)


# --- values keep their JSON spelling ---------------------------------------------------------


def test_json_values_keep_their_json_spelling(tmp_path):
    from ftlight.data.readers import read_records

    path = tmp_path / "t.jsonl"
    path.write_text(
        '{"instruction": "ok?", "input": 1.50, "output": true}\n'
        '{"instruction": "big?", "input": 1e3, "output": false}\n'
        '{"instruction": "who?", "output": {"name": "Zoë", "age": 3, "tags": [null]}}\n',
        encoding="utf-8",
    )
    answers = [Alpaca().parse(r, WHERE).messages for r in read_records(path)]
    assert answers == [
        [user("ok?\n\n1.50"), assistant("true")],
        [user("big?\n\n1e3"), assistant("false")],
        [user("who?"), assistant('{"name": "Zoë", "age": 3, "tags": [null]}')],
    ]


# --- chat: tool calls and turn weights -----------------------------------------------------


def test_openai_tool_calls_are_kept_with_arguments_as_objects():
    call = {"id": "c1", "type": "function"}
    call["function"] = {"name": "weather", "arguments": '{"city": "Oslo"}'}
    record = {
        "messages": [
            user("Weather?"),
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "rain"},
            assistant("It rains."),
        ],
        "tools": [{"type": "function", "function": {"name": "weather"}}],
    }
    example = Chat().parse(record, WHERE)
    assert example.messages[1] == assistant("")
    assert example.tool_calls == {
        1: [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "weather", "arguments": {"city": "Oslo"}},
            }
        ]
    }
    assert example.tools == record["tools"]


def test_sharegpt_function_call_and_observation_turns():
    record = {
        "conversations": [
            {"from": "human", "value": "Weather?"},
            {
                "from": "function_call",
                "value": '{"name": "weather", "arguments": {"city": "Oslo"}}',
            },
            {"from": "observation", "value": "rain"},
            {"from": "gpt", "value": "It rains."},
        ],
        "tools": '[{"name": "weather"}]',
    }
    example = Chat().parse(record, WHERE)
    assert [m["role"] for m in example.messages] == ["user", "assistant", "tool", "assistant"]
    assert example.messages[1] == assistant("")
    call = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}
    assert example.tool_calls == {1: [call]}
    assert example.tools == [{"name": "weather"}]


def test_tool_call_arguments_that_are_not_json_are_refused():
    call = {"type": "function", "function": {"name": "f", "arguments": "{city: Oslo}"}}
    record = {"messages": [user("q"), {"role": "assistant", "tool_calls": [call]}, assistant("a")]}
    with pytest.raises(DataError, match="row 7: message 2's tool call arguments is text but not"):
        Chat().parse(record, WHERE)


@pytest.mark.parametrize(("weight", "untrained"), [(0, (1,)), (1, ()), (0.0, (1,)), (None, ())])
def test_assistant_turn_weights(weight, untrained):
    turn = {"role": "assistant", "content": "first", "weight": weight}
    record = {"messages": [user("a"), turn, user("b"), assistant("second")]}
    example = Chat().parse(record, WHERE)
    assert example.untrained == untrained
    assert example.messages[1] == assistant("first")


@pytest.mark.parametrize("weight", [0.5, 2, True, "0"])
def test_assistant_turn_weights_other_than_zero_or_one_are_refused(weight):
    turn = {"role": "assistant", "content": "first", "weight": weight}
    record = {"messages": [user("a"), turn, user("b"), assistant("second")]}
    with pytest.raises(DataError) as err:
        Chat().parse(record, WHERE)
    assert str(err.value) == (
        f"train.csv row 7: message 2 has weight {weight!r}; a turn is either trained (weight 1, "
        "or no weight) or not (weight 0). Set it to 0 or 1."
    )


def test_a_final_reply_with_weight_zero_is_refused():
    record = {"messages": [user("a"), {"role": "assistant", "content": "b", "weight": 0}]}
    with pytest.raises(DataError, match="final assistant message \\(message 2\\) has weight 0"):
        Chat().parse(record, WHERE)


def test_rows_without_the_new_fields_keep_their_digest():
    from ftlight.data.formats import examples_digest

    example = SFTExample(messages=[user("a"), assistant("b")])
    assert repr(example) == (
        "SFTExample(messages=[{'role': 'user', 'content': 'a'}, "
        "{'role': 'assistant', 'content': 'b'}], raw=False)"
    )
    assert examples_digest([("r", example)]) != examples_digest(
        [("r", SFTExample(messages=example.messages, untrained=(1,)))]
    )
