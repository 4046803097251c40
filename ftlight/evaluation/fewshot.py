"""Few-shot prompting of the base model: the baseline a fine-tune has to beat.

``eval.few_shot=k`` scores the base model, before training, on the evaluation rows with the
first k training examples placed in front of each prompt: as earlier chat turns when the
tokenizer has a chat template, else as earlier turns of the plain layout training uses. The
scores are the task's metrics on the same rows and references as the zero-shot evaluation;
only the final answer is scored (the examples' answers carry no loss).
"""

from __future__ import annotations

import logging
from typing import Any

from ftlight.data.encode import IGNORE_INDEX, last_reply
from ftlight.data.formats import SFTExample, get_format
from ftlight.errors import ConfigError
from ftlight.evaluation.general import score_rows
from ftlight.logs import timed
from ftlight.validate.positions import model_limit

log = logging.getLogger("ftlight")


#: examples in the prompt with ``eval.few_shot=auto``, for tasks whose rows are prompts
AUTO_SHOTS = 3


def check_k(setting: Any) -> int | str:
    """``eval.few_shot`` as a number of examples (0 or null: off), or ``"auto"``."""
    if setting is None:
        return 0
    if setting == "auto":
        return "auto"
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 0:
        raise ConfigError(
            f"eval.few_shot={setting!r}: expected a whole number of examples >= 0 (0 turns it "
            f"off), e.g. eval.few_shot=3, or auto ({AUTO_SHOTS} for prompt tasks, else off)"
        )
    return setting


def with_examples(example: SFTExample, shots: list[SFTExample]) -> SFTExample:
    """``example`` with the shots' turns before its own (its system message stays first)."""
    system = [m for m in example.messages[:1] if m["role"] == "system"]
    earlier = [m for shot in shots for m in shot.messages if m["role"] != "system"]
    own = example.messages[len(system) :]
    return SFTExample(messages=[*system, *earlier, *own], raw=example.raw)


def last_reply_only(labels: list[int]) -> list[int]:
    """``labels`` with every reply but the last one unlabelled (the examples carry no loss)."""
    start, _ = last_reply(labels)
    return [IGNORE_INDEX] * start + labels[start:]


def few_shot_row(
    task: Any, tokenizer: Any, example: SFTExample, shots: list[SFTExample], limit: int | None
) -> tuple[dict[str, Any], int]:
    """The evaluation row of ``example`` with as many shots as fit in ``limit`` tokens (all
    when None), and how many it holds."""
    for n in range(len(shots), -1, -1):
        encoded = task.encode(with_examples(example, shots[:n]), tokenizer, None, evaluation=True)
        if encoded is None:
            continue
        row = encoded[0]
        if limit is None or len(row["input_ids"]) <= limit or n == 0:
            row["labels"] = last_reply_only(row["labels"])
            return row, n
    raise ConfigError(f"eval.few_shot: an evaluation row has no answer to score: {example}")


def few_shot_scores(run: Any, setting: Any, split: str) -> dict[str, Any] | None:
    """The ``few_shot`` block of ``metrics.json``: the base model's scores with ``k`` training
    examples in each prompt. None when off or when the task's rows are not prompts."""
    k = check_k(setting)
    if not k:
        return None
    task, tokenizer = run.task, run.tokenizer
    if k == "auto":  # a baseline where there is one to draw, silently nothing elsewhere
        if not issubclass(task.example_type, SFTExample):
            return None
        k = AUTO_SHOTS
    if not issubclass(task.example_type, SFTExample):
        log.info(
            "eval.few_shot=%d: skipped for task=%s: its rows are texts with labels, not prompts "
            "with answers, so there is no prompt to put examples in",
            k,
            task.name,
        )
        return None
    shots, examples = _find_examples(run.data, task, tokenizer, split, k)
    if not shots:
        log.warning("eval.few_shot=%d: no training example found; skipped", k)
        return None
    positions = model_limit(run.module.model)
    # the answer is generated after the prompt: both must fit in the model's positions
    limit = positions - getattr(task, "max_new_tokens", 0) if positions is not None else None
    rows, shortened = [], 0
    for example in examples:
        if example is None:
            continue
        row, n = few_shot_row(task, tokenizer, example, shots, limit)
        rows.append(row)
        shortened += n < len(shots)
    if len(rows) < len(examples):
        log.warning(
            "eval.few_shot: %d of %d evaluation rows not found in the data again; scored %d",
            len(examples) - len(rows),
            len(examples),
            len(rows),
        )
    if shortened:
        log.warning(
            "eval.few_shot: %d rows held fewer than %d examples, to fit the model's %d positions",
            shortened,
            len(shots),
            positions,
        )
    layout = "chat turns" if getattr(tokenizer, "chat_template", None) else "plain turns"
    with timed(f"evaluate the base model with {len(shots)} examples in its prompt", log):
        scores = score_rows(run, rows, split, phase="few_shot")
    return {
        "k": len(shots),
        "layout": layout,
        "split": split,
        "rows": len(rows),
        "shortened_rows": shortened,
        "scores": scores,
    }


def _find_examples(
    data: Any, task: Any, tokenizer: Any, split: str, k: int
) -> tuple[list[SFTExample], list[SFTExample | None]]:
    """The first ``k`` examples of the training split and the example of each evaluation row.

    The data module keeps only token ids, so the records are read and parsed again, and each
    is matched to its split by its token ids (a validation split held out from the training
    file is found that way too).
    """
    fmt = get_format(data.format_name, **data.fields)
    records = data.load_records()
    train_ids = {tuple(r["input_ids"]) for r in data.encoded["train"]}
    wanted = {tuple(r["input_ids"]) for r in data.encoded[split]}
    found: dict[tuple[int, ...], SFTExample] = {}
    shots: list[SFTExample] = []
    sources = ["train"] + ([split] if split in records and split != "train" else [])
    for source in sources:
        name, rows = records[source]
        for i, record in enumerate(rows):
            example = fmt.parse(record, f"{name} row {i + 1}")
            encoded = task.encode(example, tokenizer, data.max_length)
            ids = tuple(encoded[0]["input_ids"]) if encoded else ()
            if source == "train" and ids in train_ids and len(shots) < k:
                shots.append(example)
            if ids in wanted and (source == split or split not in records):
                found.setdefault(ids, example)
            if len(found) == len(wanted) and (source != "train" or len(shots) == k):
                break
            if source == "train" and len(shots) == k and split in records:
                break
    return shots, [found.get(tuple(r["input_ids"])) for r in data.encoded[split]]
