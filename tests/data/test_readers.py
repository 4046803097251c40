"""Tests for ftlight.data.readers on real-looking files."""

import csv
import gzip
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ftlight.data.readers import SUPPORTED_EXTENSIONS, read_records
from ftlight.errors import DataError


def test_csv_quoted_fields_with_commas_newlines_and_quotes(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(
        'instruction,input,output\n"Add 1, 2","",3\n"Say ""hi""\non two lines",x,"a,\nb"\n',
        encoding="utf-8",
    )
    assert read_records(path) == [
        {"instruction": "Add 1, 2", "input": "", "output": "3"},
        {"instruction": 'Say "hi"\non two lines', "input": "x", "output": "a,\nb"},
    ]


def test_csv_bom_is_dropped_from_the_first_column_name(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufefftext,label\nhello,1\n".encode())
    assert read_records(path) == [{"text": "hello", "label": "1"}]


def test_csv_keeps_values_as_strings(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\n007,3\ntrue,1.50\n", encoding="utf-8")
    assert read_records(path) == [
        {"text": "007", "label": "3"},
        {"text": "true", "label": "1.50"},
    ]


def test_csv_field_of_200k_characters_and_limit_restored(tmp_path):
    long_text = "x" * 200_000
    path = tmp_path / "long.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["text", "label"], [long_text, "a"]])
    before = csv.field_size_limit()
    records = read_records(path)
    assert len(records[0]["text"]) == 200_000
    assert csv.field_size_limit() == before


def test_tsv_with_tab_separated_columns(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("sentence1\tsentence2\tlabel\nA, b\tC\tentailment\n", encoding="utf-8")
    assert read_records(path) == [{"sentence1": "A, b", "sentence2": "C", "label": "entailment"}]


def test_csv_blank_lines_are_skipped_and_row_numbers_count_data_rows(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("a,b\n1,2\n\n3,4\n5,6,7\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_records(path)
    message = str(err.value)
    assert "train.csv row 3 (line 5)" in message
    assert "has 3 values but the header has 2 columns" in message
    assert "Quote fields" in message


def test_csv_duplicate_header(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("text,text\na,b\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"repeats column\(s\) \['text'\]"):
        read_records(path)


@pytest.mark.parametrize("content", ["", "text,label\n"])
def test_csv_without_rows(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.csv' has no rows"):
        read_records(path)


def test_csv_gz(tmp_path):
    path = tmp_path / "train.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
        handle.write('text,label\n"a\nb",pos\n')
    assert read_records(path) == [{"text": "a\nb", "label": "pos"}]


def test_jsonl_skips_blank_lines(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": "two", "b": null}\n', encoding="utf-8")
    assert read_records(path) == [{"a": 1}, {"a": "two", "b": None}]


def test_jsonl_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3,}\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_records(path)
    assert "train.jsonl line 3: not valid JSON" in str(err.value)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.jsonl line 2: is a list, expected a JSON object"):
        read_records(path)


def test_jsonl_gz(tmp_path):
    path = tmp_path / "train.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write('{"a": 1}\n{"a": 2}\n')
    assert read_records(path) == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize(
    ("name", "content", "where", "key"),
    [
        ("t.jsonl", '{"a": 1}\n{"a": 2, "b": 3, "a": 4}\n', "t.jsonl line 2", "a"),
        ("t.json", '[{"a": 1}, {"a": 2}, {"b": 3, "b": 4}]', "t.json row 3", "b"),
        ("t.json", '{"rows": [{"a": 1, "a": 2}]}', "t.json row 1", "a"),
        ("t.json", '{"v": 1, "v": 2, "rows": [{"a": 1}]}', "t.json", "v"),
        (
            "t.jsonl",
            '{"messages": [{"role": "user", "content": "a", "content": "b"}]}\n',
            "t.jsonl line 1",
            "content",
        ),
    ],
    ids=["jsonl", "json-list", "json-object", "outside-rows", "nested"],
)
def test_a_key_repeated_in_one_object_names_file_row_and_key(tmp_path, name, content, where, key):
    """``json`` would keep the last value and drop the other without a word."""
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_records(path)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / where}: key '{key}' appears more than once")
    assert "Remove or rename the repeated key" in message


def test_the_same_key_in_different_rows_is_fine(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('[{"a": 1, "b": {"a": 2}}, {"a": 3}]', encoding="utf-8")
    assert read_records(path) == [{"a": 1, "b": {"a": 2}}, {"a": 3}]


def test_json_list(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"x": "é"}, {"x": 2}]), encoding="utf-8")
    assert read_records(path) == [{"x": "é"}, {"x": 2}]


def test_json_object_holding_one_list(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"version": "1", "data": [{"x": 1}]}), encoding="utf-8")
    assert read_records(path) == [{"x": 1}]


def test_json_object_with_two_lists_is_ambiguous(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"train": [{"x": 1}], "test": [{"x": 2}]}), encoding="utf-8")
    with pytest.raises(DataError, match=r"exactly one list .* found 2 \(train, test\)"):
        read_records(path)


def test_json_list_with_a_non_object(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"x": 1}, "oops"]), encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.json row 2: is a str, expected a JSON object"):
        read_records(path)


def test_json_file_that_is_really_jsonl(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('{"x": 1}\n{"x": 2}\n', encoding="utf-8")
    assert read_records(path) == [{"x": 1}, {"x": 2}]


def test_json_empty_list_has_no_rows(tmp_path):
    path = tmp_path / "train.json"
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(DataError, match="has no rows"):
        read_records(path)


def test_json_syntax_error(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('[{"x": 1},\n {"x": }]', encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.json: not valid JSON .* line 2, column 8"):
        read_records(path)


def test_parquet_with_nan_none_and_nested_messages(tmp_path):
    path = tmp_path / "train.parquet"
    table = pa.table(
        {
            "text": ["a", None],
            "score": [1.5, float("nan")],
            "messages": [[{"role": "user", "content": "hi"}], []],
        }
    )
    pq.write_table(table, path)
    records = read_records(path)
    assert records[0] == {
        "text": "a",
        "score": 1.5,
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert records[1]["text"] is None
    assert math.isnan(records[1]["score"])


def test_parquet_that_is_not_parquet(tmp_path):
    path = tmp_path / "train.parquet"
    path.write_text("not parquet", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.parquet: cannot be read as Parquet"):
        read_records(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=r"nope\.jsonl' does not exist"):
        read_records(path)


def test_unknown_extension_lists_supported(tmp_path):
    path = tmp_path / "train.xlsx"
    path.write_text("x", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_records(path)
    assert "unsupported extension" in str(err.value)
    for extension in (".jsonl", ".json", ".csv", ".tsv", ".parquet"):
        assert extension in str(err.value)
    assert ".csv" in SUPPORTED_EXTENSIONS


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="is not UTF-8 text.*re-save it as UTF-8"):
        read_records(path)


def test_extension_is_case_insensitive(tmp_path):
    path = tmp_path / "TRAIN.JSONL"
    path.write_text('{"a": 1}\n', encoding="utf-8")
    assert read_records(str(path)) == [{"a": 1}]


def test_tsv_stray_quote_that_swallows_rows_is_reported_with_its_row_and_lines(tmp_path):
    # an unquoted export: the literal quote opens a field that csv would close four lines on
    lines = ["text\tlabel", "fine\t1", '"Great, he said\t1', "bad\t0", 'ok "really"\t0']
    lines += ["meh\t0", "good\t1"]
    path = tmp_path / "export.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_records(path)
    assert str(err.value).startswith(
        f'{path} row 2 (line 3): a field starts with a quote (") that is not closed on that '
        "line, so the TSV reader ran on over 3 lines (3 to 5) that each look like a row of "
        "their own: '\"Great, he said\\t1'."
    )
    assert 'double the quote ("""...")' in str(err.value)


def test_csv_stray_quote_running_to_the_end_of_a_crlf_file_is_reported(tmp_path):
    path = tmp_path / "export.csv"
    path.write_bytes(b'\xef\xbb\xbftext,label\r\na,1\r\n"b,0\r\nc,1\r\nd,0\r\n')
    with pytest.raises(DataError, match=r"row 2 \(line 3\).*ran on over 3 lines \(3 to 5\)"):
        read_records(path)


def test_quoted_fields_spanning_lines_still_read_as_one_field(tmp_path):
    path = tmp_path / "reviews.tsv"
    path.write_bytes(b'text\tlabel\r\n"line one\r\nline\ttwo"\t1\r\n"one line"\t0\r\n')
    assert read_records(path) == [
        {"text": "line one\r\nline\ttwo", "label": "1"},
        {"text": "one line", "label": "0"},
    ]
