"""The data module: records -> examples -> token ids -> batches, for one task and tokenizer."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from ftlight.data import cache
from ftlight.data.formats import FORMATS, examples_digest, get_format
from ftlight.data.labels import check_label_names, label_info, merge_spellings
from ftlight.data.loaders import eval_loader, train_loader
from ftlight.data.overlap import find_overlap
from ftlight.data.tokenized import encode_split, warn_truncated
from ftlight.errors import ConfigError, DataError
from ftlight.paths import cache_root
from ftlight.tasks.base import LabelInfo, Task

log = logging.getLogger("ftlight.data")

SPLITS = ("train", "validation", "test")


class FineTuneData(L.LightningDataModule):
    """Rows from a source, one way: read -> format -> encode -> batch.

    ``source`` says where raw records come from (``ftlight.data.sources``). Call
    ``bind(tokenizer, task)`` then ``prepare()`` (``train()`` does both); the encoded splits,
    label names and validation references are then available before any training.
    ``format="auto"`` takes the source's format for the task, else the task's default.
    """

    def __init__(
        self,
        source: Any,
        format: str = "auto",
        fields: Mapping[str, str] | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        max_length: int | None = 1024,
        val_fraction: float = 0.1,
        max_eval_samples: int | None = None,
        seed: int = 0,
        packing: bool = False,
        group_by_length: bool = True,
        pad_to_multiple_of: int | None = None,
        num_workers: int = 0,
        label_names: list[str] | None = None,
        cache_tokenized: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size} must be at least 1")
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={val_fraction} must be between 0 and 1")
        self.source = source
        self.format_name = format
        self.fields = dict(fields or {})
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.max_length = max_length
        self.val_fraction = val_fraction
        self.max_eval_samples = max_eval_samples
        self.seed = seed
        self.packing = packing
        self.group_by_length = group_by_length
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ConfigError(
                f"data.pad_to_multiple_of={pad_to_multiple_of} must be at least 1, or null to pad "
                "each batch to its longest row"
            )
        self.pad_to_multiple_of = pad_to_multiple_of
        #: the model's position limit, once a run has read it (``ftlight.validate.check_run``)
        self.position_limit: int | None = None
        self.num_workers = num_workers
        self.label_names = [str(x) for x in label_names] if label_names else None
        if self.label_names:
            check_label_names(self.label_names)
        self.cache_tokenized = cache_tokenized
        self.tokenizer: Any = None
        self.task: Task | None = None
        self.encoded: dict[str, list[dict[str, Any]]] = {}
        self.labels: LabelInfo | None = None
        self.stats: dict[str, Any] = {}
        self.instruction: str | None = None
        #: hash of the parsed training rows, stored in checkpoints to match a resume to its data
        self.fingerprint: str | None = None
        #: validation rows that copy a training row: ``count``, ``validation_rows``, ``first``
        self.overlap: dict[str, Any] = {}

    # -- where records come from -----------------------------------------------------------
    def load_records(self) -> dict[str, tuple[str, list[dict[str, Any]]]]:
        """Split name -> (source name for messages, raw records). ``validation`` optional."""
        return self.source.records(self.task)

    def describe(self) -> str:
        """One line naming the data, for logs and the model card."""
        return self.source.describe()

    # -- preparation ----------------------------------------------------------------------
    def bind(self, tokenizer: Any, task: Task) -> FineTuneData:
        """Attach the tokenizer and the task; must precede ``prepare``."""
        self.tokenizer = tokenizer
        self.task = task
        return self

    def prepare(self) -> None:
        """Read, parse, split, map labels and tokenize every split (once)."""
        if self.encoded:
            return
        if self.tokenizer is None or self.task is None:
            raise RuntimeError("call bind(tokenizer, task) before prepare()")
        if self.format_name == "auto":
            self.format_name = self.source.format_for(self.task) or self.task.default_format
        fmt = get_format(self.format_name, **self.fields)
        if fmt.example_type is not self.task.example_type:
            fits = [n for n, f in FORMATS.items() if f.example_type is self.task.example_type]
            raise ConfigError(
                f"data.format={self.format_name} gives {fmt.example_type.__name__} rows but "
                f"task={self.task.name} needs {self.task.example_type.__name__} rows. Use "
                f"data.format={'|'.join(fits)}"
            )
        raw = self.load_records()
        if "train" not in raw:
            raise DataError("no training data: set data.train_path")
        field = getattr(fmt, "instruction_field", None)
        if field:
            # one instruction for every row (a task-specific fine-tune): exported with the
            # model so that ftlight-generate can lay out a bare input the way training did
            seen = {str(r.get(field, "")).strip() for r in raw["train"][1]}
            self.instruction = seen.pop() if len(seen) == 1 else None
        examples: dict[str, list[tuple[str, Any]]] = {}
        for split, (source, records) in raw.items():
            if not records:
                raise DataError(f"{source} has no rows; the {split} split needs at least one")
            examples[split] = [
                (f"{source} row {i + 1}", fmt.parse(rec, f"{source} row {i + 1}"))
                for i, rec in enumerate(records)
            ]
        if "validation" not in examples:
            examples["train"], examples["validation"] = self._hold_out(examples["train"])
        if self.max_eval_samples:
            for split in ("validation", "test"):
                if split in examples:
                    examples[split] = examples[split][: self.max_eval_samples]
        if self.task.uses_labels:
            examples = merge_spellings(examples, self.label_names)
            self.labels = label_info(examples, self.label_names)
            self._label_ids = {name: i for i, name in enumerate(self.labels.names)}
        self.overlap = find_overlap(examples["train"], examples["validation"])
        self.fingerprint = examples_digest(examples["train"])
        self._tokenize(examples)

    def _tokenize(self, examples: dict[str, list[tuple[str, Any]]]) -> None:
        """Encode every split, or take the result of an identical earlier run from the cache."""
        folder = key = None
        if self.cache_tokenized:
            folder = cache_root() / "tokenized"
            settings = {
                "max_length": self.max_length,
                "task": self.task.name if self.task else None,
                "labels": getattr(self, "_label_ids", None),
            }
            key = cache.cache_key(examples, self.tokenizer, settings)
            entry = cache.load(folder, key)
            if entry is not None:
                self.encoded, self.stats = entry["encoded"], entry["stats"]
                log.info("tokenised data read from the cache (%s)", cache.entry_path(folder, key))
                for split, stats in self.stats.items():
                    warn_truncated(split, stats, self.max_length)
                return
        for split, rows in examples.items():
            self.encoded[split] = self._encode(split, rows)
        if folder is not None and key is not None:
            cache.save(folder, key, self.encoded, self.stats)

    def _hold_out(self, rows: list[Any]) -> tuple[list[Any], list[Any]]:
        if len(rows) < 2:
            raise DataError(
                "cannot hold out a validation split from a single training row; "
                "add rows or set data.val_path"
            )
        order = list(range(len(rows)))
        random.Random(self.seed).shuffle(order)
        n_val = max(1, round(len(rows) * self.val_fraction))
        val = sorted(order[:n_val])
        train = sorted(order[n_val:])
        log.info(
            "held out %d of %d training rows for validation (seed %d)", n_val, len(rows), self.seed
        )
        return [rows[i] for i in train], [rows[i] for i in val]

    def _encode(self, split: str, rows: list[tuple[str, Any]]) -> list[dict[str, Any]]:
        labels = getattr(self, "_label_ids", None)
        out, stats = encode_split(self.task, self.tokenizer, split, rows, self.max_length, labels)
        self.stats[split] = stats
        warn_truncated(split, stats, self.max_length)
        if not out:
            raise DataError(
                f"the {split} split is empty after tokenisation: every row lost its response "
                f"to data.max_length={self.max_length}. Raise data.max_length."
            )
        return out

    # -- what the rest of the run reads ---------------------------------------------------
    def references(self, split: str = "validation") -> list[str]:
        """Reference answers of an SFT split, in the order they are evaluated."""
        return [r["reference"] for r in self.encoded.get(split, []) if "reference" in r]

    # -- Lightning hooks ------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Prepare if ``train()`` has not already (e.g. when driven by a bare Trainer)."""
        self.prepare()

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def train_dataloader(self) -> DataLoader:
        """Length-grouped (or packed) batches with dynamic padding, sharded across ranks."""
        rows = self.encoded["train"]
        world, rank = self._world()
        return train_loader(
            rows,
            pad_id=self.tokenizer.pad_token_id,
            packing=self.packing and self.task.packable,
            max_length=self.max_length,
            batch_size=self.batch_size,
            group_by_length=self.group_by_length,
            seed=self.seed,
            world=world,
            rank=rank,
            num_workers=self.num_workers,
            progress=self._batches_done,
            pad_to_multiple_of=self.pad_to_multiple_of,
            pad_limit=min(filter(None, (self.max_length, self.position_limit)), default=None),
        )

    def _batches_done(self) -> int:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def _eval_loader(self, split: str) -> DataLoader:
        rows = self.encoded[split]
        world, _ = self._world()
        return eval_loader(
            rows,
            pad_id=self.tokenizer.pad_token_id,
            batch_size=self.eval_batch_size,
            seed=self.seed,
            world=world,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        """The validation split, unshuffled, with prompts for generation."""
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader:
        """The test split (if the data has one)."""
        if "test" not in self.encoded:
            raise ConfigError("this data has no test split: set data.test_path")
        return self._eval_loader("test")
