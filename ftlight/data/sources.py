"""Where records come from: local files, a ``datasets`` data set, the built-in demo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftlight.data.datamodule import FineTuneData
from ftlight.errors import ConfigError, DataError


class LocalData(FineTuneData):
    """Records from local files (.jsonl, .json, .csv, .tsv, .parquet; chosen by extension)."""

    def __init__(
        self,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not train_path:
            raise ConfigError(
                "data=local needs data.train_path=<file> (.jsonl, .json, .csv, .tsv or .parquet)"
            )
        self.paths = {"train": train_path, "validation": val_path, "test": test_path}
        for split, path in self.paths.items():
            if path and not Path(path).expanduser().is_file():
                raise DataError(
                    f"data.{'val' if split == 'validation' else split}_path={path!r} does not "
                    f"exist (looked in {Path(path).expanduser().resolve()}). Check the path; "
                    "relative paths are resolved against the directory you launched from."
                )

    def load_records(self) -> dict[str, tuple[str, list[dict[str, Any]]]]:
        """Read each given file."""
        from ftlight.data.readers import read_records

        return {
            split: (Path(path).name, read_records(Path(path).expanduser()))
            for split, path in self.paths.items()
            if path
        }

    def describe(self) -> str:
        """The files."""
        return ", ".join(f"{s}={p}" for s, p in self.paths.items() if p)


class HFData(FineTuneData):
    """A data set from the ``datasets`` library (Hub name or local folder / builder)."""

    def __init__(
        self,
        name: str | None = None,
        config_name: str | None = None,
        train_split: str = "train",
        val_split: str | None = "validation",
        test_split: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not name:
            raise ConfigError("data=hf needs data.name=<dataset name or local path>")
        self.name, self.config_name = name, config_name
        self.splits = {"train": train_split, "validation": val_split, "test": test_split}

    def load_records(self) -> dict[str, tuple[str, list[dict[str, Any]]]]:
        """Load the named splits with ``datasets.load_dataset``."""
        import datasets

        try:
            ds = datasets.load_dataset(self.name, self.config_name)
        except Exception as err:  # datasets raises many types for a missing name / no network
            raise DataError(
                f"could not load data set {self.name!r}: {err}. data=hf needs access to the "
                "Hugging Face Hub or a local data set folder; for local files use data=local."
            ) from err
        out: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        for split, hf_split in self.splits.items():
            if not hf_split:
                continue
            if hf_split not in ds:
                if split == "validation":
                    continue  # held out from train instead
                raise DataError(
                    f"data set {self.name!r} has no split {hf_split!r}; it has {list(ds)}. "
                    f"Set data.{split}_split."
                )
            out[split] = (f"{self.name}[{hf_split}]", [dict(r) for r in ds[hf_split]])
        return out

    def describe(self) -> str:
        """The data set name."""
        return f"datasets:{self.name}"


class DemoData(FineTuneData):
    """The built-in synthetic support-ticket task (see ``ftlight.data.demo``)."""

    def __init__(
        self,
        train_size: int = 1000,
        val_size: int = 100,
        test_size: int = 100,
        demo_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("format", "auto")
        super().__init__(**kwargs)
        self.sizes = {"train": train_size, "validation": val_size, "test": test_size}
        self.demo_seed = demo_seed

    def load_records(self) -> dict[str, tuple[str, list[dict[str, Any]]]]:
        """Generate the tickets; rows in alpaca form for SFT, text/label for classification."""
        from ftlight.data import demo

        splits = demo.demo_splits(
            train_size=self.sizes["train"],
            val_size=self.sizes["validation"],
            test_size=self.sizes["test"],
            seed=self.demo_seed,
        )
        # tickets become text/label rows for a labelled task, instruction/answer rows otherwise
        convert = demo.to_classification_rows if self.task.uses_labels else demo.to_sft_rows
        return {s: (f"demo[{s}]", convert(rows)) for s, rows in splits.items() if rows}

    def prepare(self) -> None:
        """Pick the row format from the task, then prepare as usual."""
        if self.format_name == "auto":
            self.format_name = self.task.default_format
        super().prepare()

    def describe(self) -> str:
        """The generator and sizes."""
        return f"demo support tickets (synthetic, seed {self.demo_seed}, sizes {self.sizes})"
