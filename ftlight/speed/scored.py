"""What a scoring pass keeps for the decoding that follows it (``speed.decode``).

Evaluation scores each row (its loss pass) and then decodes an answer to the row's prompt.
Every prompt is the start of its row, so the scoring pass has already computed the prompt's
keys and values, and the scores at its last position: ``ScoredPrompts`` holds them, and
``prompted`` hands them to the greedy decoder in the form it continues from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from ftlight.data.encode import IGNORE_INDEX
from ftlight.speed.decode import Prompted


@dataclass
class ScoredPrompts:
    """The keys and values a scoring pass computed for the prompts its rows start with:
    greedy decoding continues from them (``prompted``)."""

    cache: DynamicCache  # rows in ``order``; positions ``offset:`` of each row's prompt
    offset: int  # the opening's length when it is kept apart (``opening``), else 0
    opening: list[tuple[torch.Tensor, torch.Tensor]] | None
    lengths: torch.Tensor  # (rows,) each row's prompt length: the start of its last reply
    keep: torch.Tensor  # (rows, length) the positions whose predictions the pass made
    order: torch.Tensor  # the batch rows in the order of the cache and of the predictions
    #: (rows, vocabulary) float32 scores at each row's last prompt position, in batch order:
    #: where logits processors start (``ftlight.tasks.generation``)
    scores: torch.Tensor | None = None

    def prompted(
        self,
        predictions: torch.Tensor,
        row_ids: torch.Tensor,
        prompts: torch.Tensor,
        prompt_mask: torch.Tensor,
    ) -> Prompted | None:
        """Where decoding of ``prompts`` (left-padded) continues, or None when a prompt is
        not the start of its scored row."""
        lengths = prompt_mask.sum(1)
        if not torch.equal(lengths, self.lengths):
            return None
        for row, prompt, keep in zip(row_ids, prompts, prompt_mask.bool(), strict=True):
            if not torch.equal(row[: len(prompt[keep])], prompt[keep]):
                return None
        made = self.keep[self.order].nonzero()  # (row in ``order``, position) per prediction
        table = torch.full(self.keep.shape, -1, dtype=predictions.dtype, device=predictions.device)
        table[self.order[made[:, 0]], made[:, 1]] = predictions
        first = table[torch.arange(len(lengths), device=lengths.device), lengths - 1]
        if bool((first < 0).any()):  # a prompt's last position was not scored
            return None
        column = torch.arange(self.cache.get_seq_length(), device=lengths.device) + self.offset
        rows = self.order
        valid = column[None, :] < lengths[rows, None]
        scores = self.scores[rows] if self.scores is not None else None
        return Prompted(self.cache, valid, lengths[rows], first[rows], self.opening, rows, scores)


def prompt_scores(
    scores: torch.Tensor | None,
    logits: torch.Tensor,
    keep: torch.Tensor,
    rows: torch.Tensor,
    prompt_lengths: torch.Tensor,
) -> torch.Tensor:
    """``scores`` (batch rows, vocabulary; made on first use) with the float32 logits at the
    last prompt position of ``rows`` filled in from a pass that projected ``keep``."""
    if scores is None:
        scores = logits.new_zeros((len(prompt_lengths), logits.shape[-1]), dtype=torch.float32)
    at = (keep.flatten().cumsum(0) - 1).view_as(keep)  # each kept position's row in ``logits``
    last = (prompt_lengths[rows] - 1).clamp(min=0)
    lines = torch.arange(len(rows), device=keep.device)
    made = keep[lines, last]
    scores[rows[made]] = logits[at[lines, last][made]].float()
    return scores


def prompt_lengths(labels: torch.Tensor) -> torch.Tensor:
    """``(rows,)``: where each row's last reply (its last run of labels) starts; 0 for a row
    without labels."""
    labelled = labels != IGNORE_INDEX
    starts = labelled.clone()
    starts[:, 1:] &= ~labelled[:, :-1]
    columns = torch.arange(labels.shape[1], device=labels.device).expand_as(labels)
    return torch.where(starts, columns, 0).amax(1)
