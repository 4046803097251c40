"""A split's examples as token ids: the task's encoding, its truncated and dropped rows counted."""

from __future__ import annotations

import logging
from typing import Any

from ftlight.errors import DataError
from ftlight.tasks.base import Task

log = logging.getLogger("ftlight.data")


def encode_split(
    task: Task,
    tokenizer: Any,
    split: str,
    rows: list[tuple[str, Any]],
    max_length: int | None,
    label_ids: dict[str, int] | None,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The encoded rows of ``split`` (``(where, example)`` pairs) and their statistics: rows
    kept, truncated, and dropped for lack of an answer token. An error names its row."""
    out: list[dict[str, Any]] = []
    truncated = dropped = 0
    for where, ex in rows:
        try:
            encoded = task.encode(
                ex,
                tokenizer,
                max_length,
                label_ids=label_ids,
                evaluation=split != "train",
            )
        except DataError as err:  # the template's and the tokenizer's errors, with the row
            if str(err).startswith(where):
                raise
            raise DataError(f"{where}: {err}") from err
        if encoded is None:
            dropped += 1
            continue
        row, was_truncated = encoded
        if row.get("reference") == "":  # every answer, even an empty one, would match it
            raise DataError(
                f"{where}: the reference answer is empty after tokenisation (data.max_length="
                f"{max_length}); raise data.max_length or fix the row's answer."
            )
        truncated += int(was_truncated)
        out.append(row)
    return out, {"rows": len(out), "truncated": truncated, "dropped": dropped}


def warn_truncated(split: str, stats: dict[str, int], max_length: int | None) -> None:
    """Warn of the rows of ``split`` that ``max_length`` truncated or dropped, if any."""
    if stats["truncated"] or stats["dropped"]:
        n = stats["dropped"]
        dropped = f"; {n} dropped (no answer token left)" if n else ""
        log.warning(
            "%s: %d of %d rows longer than data.max_length=%s were truncated%s. Raise "
            "data.max_length to keep them whole.",
            *(split, stats["truncated"], stats["rows"] + stats["dropped"], max_length),
            dropped,
        )
