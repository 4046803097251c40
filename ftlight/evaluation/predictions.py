"""What each evaluation answered, row by row: ``predictions/<phase>.jsonl`` in the run folder.

One JSON object a line, in the split's order: ``row`` (1-based), ``prompt`` (the text the
model saw, chat template and special tokens included), ``reference``, the model's ``answer``
(for classification ``label`` and its ``probability``) and the row's ``scores`` by metric.
``ftlight-compare A B --diff`` lists the rows where two runs answered differently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ftlight.errors import FtlightError
from ftlight.evaluation.structured import score_records
from ftlight.files import atomic_write_text

FOLDER = "predictions"
"""The run folder's subfolder holding one file per evaluation phase."""

PHASES = ("before", "few_shot", "after")
"""The phases ``ftlight-train`` writes (``ftlight-eval`` names its file after the split)."""


class PredictionRows:
    """The rows one evaluation pass scored, in the order this process saw them."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Append one batch's rows."""
        self.rows.extend(rows)


def answer_rows(
    tokenizer: Any,
    batch: dict[str, Any],
    answers: list[str] | None,
    loss: torch.Tensor,
    accuracy: torch.Tensor,
    json_fields: list[str] | None = None,
) -> list[dict[str, Any]]:
    """The rows of one generation batch: prompt, reference, answer (None: not generated),
    each row's scores under the names its metrics report."""
    ids, mask = batch["gen_input_ids"], batch["gen_attention_mask"].bool()
    rows = []
    for i, reference in enumerate(batch["references"]):
        prompt = tokenizer.decode(ids[i][mask[i]], skip_special_tokens=False)
        row: dict[str, Any] = {"prompt": prompt, "reference": reference}
        scores = {"loss": float(loss[i]), "token_accuracy": float(accuracy[i])}
        if answers is not None:
            row["answer"] = answers[i]
            scores["exact_match"] = float(answers[i].strip() == reference.strip())
            if json_fields:
                found = score_records([answers[i]], [reference], json_fields)
                scores.update({f"json/{k}": v for k, v in found.items()})
        rows.append({**row, "scores": scores})
    return rows


def label_rows(
    tokenizer: Any,
    batch: dict[str, Any],
    names: list[str],
    logits: torch.Tensor,
    labels: torch.Tensor,
) -> list[dict[str, Any]]:
    """The rows of one classification batch: text, reference, predicted label and its
    probability, each row's accuracy and loss."""
    probabilities = logits.float().softmax(-1)
    chosen = probabilities.argmax(-1)
    losses = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
    mask = batch.get("attention_mask")
    rows = []
    for i, ids in enumerate(batch["input_ids"]):
        kept = ids[mask[i].bool()] if mask is not None else ids
        rows.append(
            {
                "prompt": tokenizer.decode(kept, skip_special_tokens=False),
                "reference": names[int(labels[i])],
                "label": names[int(chosen[i])],
                "probability": float(probabilities[i, chosen[i]]),
                "scores": {
                    "accuracy": float(chosen[i] == labels[i]),
                    "loss": float(losses[i]),
                },
            }
        )
    return rows


def phase_file(run_dir: Path, phase: str, folder: Path | None = None) -> Path:
    """Where the rows of ``phase`` go: ``folder`` (default: the run folder's ``predictions``)."""
    return Path(folder if folder is not None else Path(run_dir) / FOLDER) / f"{phase}.jsonl"


def gathered(rows: list[dict[str, Any]], total: int) -> list[dict[str, Any]]:
    """Every process's rows in the split's order, numbered from 1 (the same on every rank).

    Under DDP each rank scores the rows ``DistributedSampler(shuffle=False)`` gives it: rank
    ``r``'s ``i``-th row is row ``r + i * world`` of the split, and the sampler repeats the
    first rows to even the ranks out (those repeats are dropped).
    """
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    parts: list[Any] = [rows]
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, rows)
    found: dict[int, dict[str, Any]] = {}
    for rank, part in enumerate(parts):
        for i, row in enumerate(part or []):
            index = (rank + i * world) % max(total, 1) if world > 1 else i
            found.setdefault(index, row)
    return [{"row": index + 1, **found[index]} for index in sorted(found)]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """``rows`` as JSON lines, written whole or not at all."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    atomic_write_text(path, text)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a predictions file (a run folder's ``predictions/<phase>.jsonl``)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FtlightError(
            f"{path}: no such predictions file; every evaluation writes one (before, "
            "few_shot, after), so the run skipped that phase or was made by an ftlight "
            "that did not keep predictions"
        ) from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise FtlightError(
                f"{path} line {n} is not JSON ({err.msg}); rerun the evaluation"
            ) from None
    return rows


def predictions_path(path: Path, phase: str) -> Path:
    """The predictions file of a run folder (or the file itself when ``path`` is one)."""
    path = Path(path)
    return path if path.is_file() else phase_file(path, phase)


def differing(
    first: list[dict[str, Any]], second: list[dict[str, Any]]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The pairs of rows (matched by ``row``) whose answers or scores differ."""
    theirs = {row["row"]: row for row in second}
    pairs = []
    for row in first:
        other = theirs.get(row["row"])
        if other is None:
            continue
        if row.get("prompt") != other.get("prompt"):
            raise FtlightError(
                f"row {row['row']} has another prompt in each run; --diff compares runs "
                "evaluated on the same rows (the same eval split of the same data)"
            )
        if _outcome(row) != _outcome(other):
            pairs.append((row, other))
    return pairs


def diff_runs(first: Path, second: Path, phase: str = "after") -> str:
    """``format_diff`` of two run folders' (or predictions files') rows of ``phase``."""
    rows = [read_rows(predictions_path(p, phase)) for p in (first, second)]
    return format_diff((str(first), str(second)), rows[0], rows[1])


def format_diff(names: tuple[str, str], first: list[dict], second: list[dict]) -> str:
    """The rows where two runs differ, each with its prompt, reference and both answers."""
    pairs = differing(first, second)
    shared = len({r["row"] for r in first} & {r["row"] for r in second})
    lines = [f"{len(pairs)} of {shared} rows differ between {names[0]} and {names[1]}"]
    for a, b in pairs:
        changes = [
            f"{k} {_number(a['scores'].get(k))} -> {_number(b['scores'].get(k))}"
            for k in sorted(set(a.get("scores", {})) | set(b.get("scores", {})))
            if a.get("scores", {}).get(k) != b.get("scores", {}).get(k) and k != "loss"
        ]
        lines += ["", f"row {a['row']}" + (f"  ({', '.join(changes)})" if changes else "")]
        lines.append(f"  prompt:    {_short(a.get('prompt'), tail=True)}")
        lines.append(f"  reference: {_short(a.get('reference'))}")
        lines.append(f"  {names[0]}: {_short(_said(a))}")
        lines.append(f"  {names[1]}: {_short(_said(b))}")
    return "\n".join(lines)


def _outcome(row: dict[str, Any]) -> tuple[Any, ...]:
    """What a row answered; without an answer (generation off), its token accuracy."""
    if "answer" in row or "label" in row:
        return row.get("answer"), row.get("label")
    return (row.get("scores", {}).get("token_accuracy"),)


def _said(row: dict[str, Any]) -> str:
    if "label" in row:
        return f"{row['label']} (p={row.get('probability', 0.0):.3f})"
    return str(row.get("answer"))


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:g}"


def _short(text: Any, width: int = 160, tail: bool = False) -> str:
    """``text`` on one line, cut to ``width`` (a prompt keeps its end: the question)."""
    flat = " ".join(str(text).split())
    if len(flat) <= width:
        return flat
    return "..." + flat[-(width - 3) :] if tail else flat[: width - 3] + "..."
