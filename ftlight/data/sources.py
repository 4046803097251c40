"""Where records come from: local files, a ``datasets`` data set, the built-in demo.

A source yields raw records per split and describes itself; the data module
(``FineTuneData``) does the rest (format, encode, batch). The ``local_files``,
``hub_dataset`` and ``demo_tickets`` functions are the ``data=`` config targets: they take the
source's settings and the data module's, and put the two together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from ftlight.data import demo
from ftlight.data.datamodule import FineTuneData
from ftlight.data.readers import read_records
from ftlight.errors import ConfigError, DataError
from ftlight.tasks.base import Task

#: split name -> (name used in messages, raw records); ``validation`` and ``test`` optional
Records = dict[str, tuple[str, list[dict[str, Any]]]]


class RecordSource(Protocol):
    """What the data module needs from where the rows come from."""

    def records(self, task: Task) -> Records:
        """Raw records of each split the source has."""
        ...

    def format_for(self, task: Task) -> str | None:
        """The data format its rows are in for ``task``, when the source decides it."""
        ...

    def describe(self) -> str:
        """One line naming the data, for logs and the model card."""
        ...


class LocalFiles:
    """Records from local files (.jsonl, .json, .csv, .tsv, .parquet; chosen by extension)."""

    def __init__(
        self,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
    ) -> None:
        if not train_path:
            raise ConfigError(
                "data=local needs data.train_path=<file> (.jsonl, .json, .csv, .tsv or .parquet)"
            )
        self.paths = {"train": train_path, "validation": val_path, "test": test_path}
        for split, path in self.paths.items():
            if path and not Path(path).expanduser().is_file():
                key = f"data.{'val' if split == 'validation' else split}_path"
                try:
                    where = Path(path).expanduser().resolve()
                except (RuntimeError, OSError) as err:  # pathlib's "Symlink loop from ..."
                    raise DataError(
                        f"{key}={path!r}: the symbolic link leads back to itself ({err}); point "
                        f"{key} at the real file, or fix the link (ls -l {path})"
                    ) from None
                raise DataError(
                    f"{key}={path!r} does not exist (looked in {where}). Check the path; "
                    "relative paths are resolved against the directory you launched from."
                )

    def records(self, task: Task) -> Records:
        """Read each given file."""
        return {
            split: (Path(path).name, read_records(Path(path).expanduser()))
            for split, path in self.paths.items()
            if path
        }

    def format_for(self, task: Task) -> str | None:
        """Files can hold any format: ``data.format`` says which."""
        return None

    def describe(self) -> str:
        """The files."""
        return ", ".join(f"{s}={p}" for s, p in self.paths.items() if p)


class HubDataset:
    """A data set from the ``datasets`` library (Hub name or local folder / builder)."""

    def __init__(
        self,
        name: str | None = None,
        config_name: str | None = None,
        train_split: str = "train",
        val_split: str | None = "validation",
        test_split: str | None = None,
    ) -> None:
        if not name:
            raise ConfigError("data=hf needs data.name=<dataset name or local path>")
        self.name, self.config_name = name, config_name
        self.splits = {"train": train_split, "validation": val_split, "test": test_split}

    def records(self, task: Task) -> Records:
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

    def format_for(self, task: Task) -> str | None:
        """``data.format`` says how the data set's columns read."""
        return None

    def describe(self) -> str:
        """The data set name."""
        return f"datasets:{self.name}"


class DemoTickets:
    """The built-in synthetic support tickets (see ``ftlight.data.demo``)."""

    def __init__(
        self, train_size: int = 1000, val_size: int = 100, test_size: int = 100, demo_seed: int = 0
    ) -> None:
        self.sizes = {"train": train_size, "validation": val_size, "test": test_size}
        self.demo_seed = demo_seed

    def records(self, task: Task) -> Records:
        """Tickets as text/label rows for a labelled task, instruction/answer rows otherwise."""
        splits = demo.demo_splits(
            train_size=self.sizes["train"],
            val_size=self.sizes["validation"],
            test_size=self.sizes["test"],
            seed=self.demo_seed,
        )
        convert = demo.to_classification_rows if task.uses_labels else demo.to_sft_rows
        return {s: (f"demo[{s}]", convert(rows)) for s, rows in splits.items() if rows}

    def format_for(self, task: Task) -> str | None:
        """The rows are written in the task's default format."""
        return task.default_format

    def describe(self) -> str:
        """The generator and sizes."""
        return f"demo support tickets (synthetic, seed {self.demo_seed}, sizes {self.sizes})"


# -- the data= config targets: a source plus the data module's settings -------------------------
def local_files(
    train_path: str | None = None,
    val_path: str | None = None,
    test_path: str | None = None,
    **settings: Any,
) -> FineTuneData:
    """``data=local``: local files; ``settings`` are ``FineTuneData``'s arguments."""
    return FineTuneData(LocalFiles(train_path, val_path, test_path), **settings)


def hub_dataset(
    name: str | None = None,
    config_name: str | None = None,
    train_split: str = "train",
    val_split: str | None = "validation",
    test_split: str | None = None,
    **settings: Any,
) -> FineTuneData:
    """``data=hf``: a ``datasets`` data set; ``settings`` are ``FineTuneData``'s arguments."""
    source = HubDataset(name, config_name, train_split, val_split, test_split)
    return FineTuneData(source, **settings)


def demo_tickets(
    train_size: int = 1000,
    val_size: int = 100,
    test_size: int = 100,
    demo_seed: int = 0,
    **settings: Any,
) -> FineTuneData:
    """``data=demo``: the built-in tickets; ``settings`` are ``FineTuneData``'s arguments."""
    return FineTuneData(DemoTickets(train_size, val_size, test_size, demo_seed), **settings)


for _factory in (local_files, hub_dataset, demo_tickets):
    _factory.builds = FineTuneData  # type: ignore[attr-defined]  # where **settings go
