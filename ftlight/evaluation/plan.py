"""``Evaluation``: what a run scores before and after training and what it writes at its end
(the ``eval`` config group, ``conf/eval/default.yaml``).

Built with the run's other parts, before any weights load (a general-text file that cannot be
read stops the run there); the run then asks it, and reads no config.
"""

from __future__ import annotations

from typing import Any

from ftlight.errors import ConfigError
from ftlight.evaluation.fewshot import check_k, few_shot_scores
from ftlight.evaluation.general import GeneralText

SPLITS = ("validation", "test")


class Evaluation:
    """The run's evaluation settings, each described in ``conf/eval/default.yaml``."""

    def __init__(
        self,
        before: bool = True,
        after: bool = True,
        split: str = "validation",
        generate_during_fit: bool = False,
        plots: bool = True,
        export: bool = True,
        best: bool = False,
        general: Any = "builtin",
        few_shot: int | str | None = "auto",
    ) -> None:
        if split not in SPLITS:
            raise ConfigError(f"eval.split={split!r} is not one of {', '.join(SPLITS)}")
        self.before = bool(before)
        self.after = bool(after)
        self.split = split
        self.generate_during_fit = bool(generate_during_fit)
        self.plots = bool(plots)
        self.export = bool(export)
        self.best = bool(best)
        self.general = GeneralText.from_setting(general)  # read now: before any model loads
        self.few_shot = check_k(few_shot)

    def scores(self, run: Any, when: str) -> dict[str, float]:
        """The task's metrics on the evaluation split, plus general-text perplexity if asked;
        ``when``: the phase (``before``, ``after``) its predictions file is named after."""
        return run.evaluate(self.split, phase=when) | self.general.scores(run)

    def few_shot_scores(self, run: Any) -> dict[str, Any] | None:
        """The prompted base model's scores (``eval.few_shot``), or None when off."""
        return few_shot_scores(run, self.few_shot, self.split)
