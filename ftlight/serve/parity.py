"""A GGUF scored through ``llama-server`` on a run's evaluation split, with the run's metrics.

The prompts are the ones the run's ``after`` evaluation fed the model (chat template and
special tokens included, ``predictions/after.jsonl``), so the file is asked exactly what the
trained model was asked; its answers are scored as ``CausalLMTask`` scores them.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ftlight.errors import ModelError
from ftlight.evaluation.structured import score_records
from ftlight.serve.gguf import metadata, read_json, token_text
from ftlight.serve.server import LlamaServer
from ftlight.tasks.causal_lm import AUTO_MARGIN

log = logging.getLogger("ftlight")

PHASE = "after"
"""The run's evaluation whose prompts and answers the GGUF is compared with."""


def run_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of the run's ``after`` evaluation that were generated (prompt, reference,
    answer); a ``ModelError`` when the run has none."""
    path = run_dir / "predictions" / f"{PHASE}.jsonl"
    if not path.is_file():
        raise ModelError(
            f"{run_dir} has no {path.relative_to(run_dir)}: the GGUF is scored on the prompts "
            "of the run's evaluation after training. Score a run folder written by "
            "ftlight-train with eval.after=true on a causal_lm task"
        )
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    rows = [row for row in rows if row.get("answer") is not None]
    if not rows:
        raise ModelError(f"{path} holds no generated answers (task.generate=false?)")
    return rows


def has_evaluation(run_dir: Path) -> bool:
    """Whether the run's ``after`` evaluation generated answers to compare with."""
    try:
        run_rows(run_dir)
    except (ModelError, ValueError):
        return False
    return True


def answer_budget(run_dir: Path, references: list[str]) -> int:
    """The run's ``task.max_new_tokens``; for ``auto``, sized from the references as the task
    sizes it."""
    setting = _task_setting(run_dir, "max_new_tokens", "auto")
    if setting != "auto":
        return int(setting)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run_dir / "model")
    longest = max(len(ids) for ids in tok(references, add_special_tokens=False)["input_ids"])
    return longest + AUTO_MARGIN


def _task_setting(run_dir: Path, key: str, default: Any) -> Any:
    """One ``task`` setting of the run: from Hydra's record (``.hydra/config.yaml``), else from
    the configuration block of the model card ftlight wrote (a run started by ``train(cfg)``
    has no Hydra record). Read as a plain value, never instantiated."""
    record = run_dir / ".hydra" / "config.yaml"
    if record.is_file():
        return OmegaConf.load(record).get("task", {}).get(key, default)
    card = run_dir / "model" / "README.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    if block is None:
        return default
    config = OmegaConf.create(block.group(1))
    return config.get("task", {}).get(key, default) if isinstance(config, DictConfig) else default


def score(
    answers: list[str], references: list[str], output_format: str = "auto"
) -> dict[str, float]:
    """Exact match, and the JSON-record metrics when every reference is a JSON object."""
    same = sum(a.strip() == r.strip() for a, r in zip(answers, references, strict=True))
    out = {"exact_match": same / len(answers)}
    if output_format != "text" and all(_is_object(r) for r in references):
        out.update({f"json/{k}": v for k, v in score_records(answers, references).items()})
    return out


def _is_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (json.JSONDecodeError, TypeError):
        return False


def score_gguf(gguf: Path, run_dir: Path) -> dict[str, Any]:
    """``gguf`` answering the run's evaluation prompts greedily through ``llama-server``: the
    run's metrics, how many answers equal the run's own (``agree``, of ``rows``), seconds."""
    rows = run_rows(run_dir)
    references = [row["reference"] for row in rows]
    budget = answer_budget(run_dir, references)
    leading_bos = _added_bos(gguf)
    answers = []
    start = time.perf_counter()
    with LlamaServer(gguf) as server:
        for row in rows:
            prompt = row["prompt"]
            if leading_bos and prompt.startswith(leading_bos):  # the server adds it itself
                prompt = prompt[len(leading_bos) :]
            answers.append(server.complete(prompt, budget))
    seconds = time.perf_counter() - start
    output_format = _task_setting(run_dir, "output_format", "auto")
    metrics: dict[str, Any] = score(answers, references, output_format)
    agree = sum(a.strip() == row["answer"].strip() for a, row in zip(answers, rows, strict=True))
    metrics.update(agree=agree, rows=len(rows), seconds=round(seconds, 1))
    log.info(
        "%s: %d of %d answers equal the run's, in %.1f s", gguf.name, agree, len(rows), seconds
    )
    return metrics


def _added_bos(gguf: Path) -> str | None:
    """The BOS text llama.cpp puts before a prompt of ``gguf`` (None: it adds none)."""
    meta = metadata(gguf)
    bos = meta.get("tokenizer.ggml.bos_token_id")
    if not meta.get("tokenizer.ggml.add_bos_token") or bos is None:
        return None
    return token_text(gguf, int(bos))


def after_metrics(run_dir: Path) -> dict[str, float]:
    """The run's own ``after`` figures (``metrics.json``)."""
    return read_json(run_dir / "metrics.json").get(PHASE) or {}


def table(after: dict[str, float], scored: dict[str, dict[str, Any]]) -> str:
    """The metrics each GGUF scored beside the run's ``after`` column, and how many of its
    answers equal the run's."""
    names: list[str] = []
    for scores in scored.values():
        names += [k for k in scores if k not in (*names, "agree", "rows", "seconds")]
    columns = {PHASE: after, **scored}
    width = max(len(n) for n in [*names, "same answers as after"])
    head = f"{'metric':<{width}}" + "".join(f"  {c:>12}" for c in columns)
    lines = [head, "-" * len(head)]
    for name in names:
        cells = "".join(f"  {_cell(s.get(name)):>12}" for s in columns.values())
        lines.append(f"{name:<{width}}{cells}")
    same = "".join(f"  {s['agree']:>5} of {s['rows']:<3}" for s in scored.values())
    lines.append(f"{'same answers as after':<{width}}  {'':>12}{same}")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return "-" if not isinstance(value, float) else f"{value:.4f}"
