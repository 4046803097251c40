"""Run ftlight's commands on a faster malloc than the C library's.

Training with variable batch shapes (length-grouped, dynamically padded rows) fragments
glibc's heap: with glibc's malloc a run's steps slow down and its resident memory grows over
the run, where tcmalloc, jemalloc and mimalloc stay flat and faster (benchmarks/README.md has
the measurements). An allocator
can only be chosen before the process starts, so the console entry points re-execute
themselves once with the library in ``LD_PRELOAD``, as PyTorch's own CPU launcher does.

tcmalloc and jemalloc are system packages. Where neither is installed, ftlight uses mimalloc
from its ``cmeel-mimalloc`` dependency (a wheel on Linux x86-64 and aarch64), with freed
memory kept for reuse for an hour rather than handed back to the kernel after a few
milliseconds (``MIMALLOC_PURGE_DELAY``): mimalloc's default purging re-faulted the training
step's buffers every step and was slower than glibc's malloc (benchmarks/README.md).

Between the phases of a run (evaluation, training, export), whose buffers differ in size,
``release_free_memory`` hands what the malloc holds free back to the kernel, so that a phase's
peak is its own rather than its own on top of what the phases before it left.

``FTLIGHT_ALLOCATOR`` controls it: ``auto`` (default) uses the first library found, ``system``
keeps the C library's malloc, and a path preloads that file. Without it, ``speed=plain`` or
``speed.malloc=false`` on the command line keep the C library's malloc.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import sys
from pathlib import Path

ENV = "FTLIGHT_ALLOCATOR"
_DONE = "FTLIGHT_ALLOCATOR_ACTIVE"
LIBRARIES = (  # in order of preference: tcmalloc was the fastest here, for training and generation
    "libtcmalloc_minimal.so.4",
    "libtcmalloc.so.4",
    "libjemalloc.so.2",
    "libjemalloc.so",
)
BUNDLED = ("cmeel-mimalloc", "libmimalloc.so")
"""The distribution that ships a malloc library with ftlight, and the library's file name."""
SETTINGS: dict[str, dict[str, str]] = {
    # kept for reuse for an hour, not purged after a few milliseconds: each training step
    # frees and reallocates the same buffers, and purging them made every step fault them in
    # again; a finite delay (unlike -1) lets ``release_free_memory`` hand them back at once
    "mimalloc": {"MIMALLOC_PURGE_DELAY": "3600000"},
}
"""Environment settings per library, applied unless the user set them."""


def search_dirs() -> list[Path]:
    """Library folders to look in: the environment's own ``lib``, then the system's."""
    dirs = [Path(sys.prefix) / "lib", Path(sys.base_prefix) / "lib"]
    multiarch = getattr(sys.implementation, "_multiarch", None)
    for root in ("/usr/local/lib", "/usr/lib", "/lib"):
        if multiarch:
            dirs.append(Path(root) / multiarch)
        dirs.append(Path(root))
    dirs.append(Path("/usr/lib64"))
    return list(dict.fromkeys(dirs))


def bundled_allocator() -> Path | None:
    """mimalloc as installed with ftlight (``cmeel-mimalloc``), or None where it is not."""
    dist_name, file_name = BUNDLED
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name == file_name:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    return None


def find_allocator(dirs: list[Path] | None = None, *, bundled: bool = True) -> Path | None:
    """The first tcmalloc or jemalloc shared library found, else ftlight's mimalloc, or None.

    ``dirs`` replaces the system folders searched; ``bundled=False`` leaves mimalloc out.
    """
    for name in LIBRARIES:
        for folder in dirs if dirs is not None else search_dirs():
            if (folder / name).is_file():
                return folder / name
    return bundled_allocator() if bundled else None


def _family(lib: str) -> str | None:
    return next((tag for tag in ("tcmalloc", "jemalloc", "mimalloc") if tag in lib), None)


def _already_fast(env: dict[str, str]) -> bool:
    return bool(env.get(_DONE)) or _family(env.get("LD_PRELOAD", "")) is not None


def plain_on_command_line(args: list[str]) -> bool:
    """Whether the command line keeps the C library's malloc: ``speed=plain`` or
    ``speed.malloc=false`` (read before Hydra composes anything; ``FTLIGHT_ALLOCATOR`` wins)."""
    malloc = None
    for arg in args:
        key, _, value = arg.lstrip("+~").partition("=")
        if key == "speed":
            malloc = value.strip() != "plain"
        elif key == "speed.malloc":
            malloc = value.strip().lower() not in ("false", "0", "no", "off")
    return malloc is False


def preload_command(
    env: dict[str, str] | None = None, dirs: list[Path] | None = None, *, bundled: bool = True
) -> tuple[list[str], dict[str, str]] | None:
    """The command and environment to re-execute with, or None to carry on as we are."""
    env = dict(os.environ if env is None else env)
    choice = env.get(ENV, "auto").strip()
    if not sys.platform.startswith("linux") or choice in ("system", "off", "none", "0"):
        return None
    if ENV not in env and plain_on_command_line(sys.argv[1:]):
        return None
    if _already_fast(env):
        return None
    if choice in ("auto", ""):
        lib = find_allocator(dirs, bundled=bundled)
        if lib is None:
            return None
    else:
        lib = Path(choice)
        if not lib.is_file():
            raise SystemExit(
                f"{ENV}={choice!r}: no such file. Expected 'auto', 'system' or the path of a "
                "malloc library such as /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4."
            )
    env["LD_PRELOAD"] = " ".join(p for p in (str(lib), env.get("LD_PRELOAD", "")) if p)
    env[_DONE] = str(lib)
    for key, value in SETTINGS.get(_family(lib.name) or "", {}).items():
        env.setdefault(key, value)
    return [sys.executable, *sys.orig_argv[1:]], env


def describe() -> str:
    """One line for the log: the malloc this process runs on, with a hint when it is glibc's."""
    active = os.environ.get(_DONE)
    if active or _already_fast(dict(os.environ)):
        lib = active or os.environ.get("LD_PRELOAD", "")
        settings = [
            f"{k}={os.environ[k]}" for k in SETTINGS.get(_family(lib) or "", {}) if k in os.environ
        ]
        return f"host malloc: {lib}" + (f" ({', '.join(settings)})" if settings else "")
    if ENV not in os.environ and plain_on_command_line(sys.argv[1:]):
        return "host malloc: the C library's (speed.malloc=false)"
    if os.environ.get(ENV, "auto") in ("auto", "") and sys.platform.startswith("linux"):
        return (
            "host malloc: the C library's; install mimalloc (pip install cmeel-mimalloc, which "
            "ftlight's install brings on Linux x86-64/aarch64) or tcmalloc (apt-get install "
            "libtcmalloc-minimal4) for faster, steadier CPU training: ftlight's commands "
            "preload it when found"
        )
    return "host malloc: the C library's"


def use_fast_allocator(dirs: list[Path] | None = None, *, bundled: bool = True) -> None:
    """Re-execute this command under tcmalloc/jemalloc/mimalloc if found (see module doc).

    Call it first thing in a console entry point, before anything heavy is imported; it returns
    when no library is found, when one is already loaded, or when ``FTLIGHT_ALLOCATOR=system``.
    """
    plan = preload_command(dirs=dirs, bundled=bundled)
    if plan is None:
        return
    argv, env = plan
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def release_free_memory() -> str | None:
    """Hand the memory this process's malloc holds free back to the kernel (Linux); the call
    that did it, or None where no known malloc is loaded. Each library keeps freed memory for
    reuse, which is right within a phase and wrong between phases of different shapes."""
    if not sys.platform.startswith("linux"):
        return None
    process = ctypes.CDLL(None)
    calls = (  # the preloaded library's own call first: glibc's malloc_trim is always there
        ("mi_collect", (ctypes.c_bool(True),)),  # mimalloc: force collection and purging
        ("MallocExtension_ReleaseFreeMemory", ()),  # tcmalloc
        ("mallctl", (b"arena.4096.purge", None, None, None, ctypes.c_size_t(0))),  # jemalloc
        ("malloc_trim", (ctypes.c_size_t(0),)),  # glibc
    )
    for name, args in calls:
        function = getattr(process, name, None)
        if function is not None:
            function(*args)
            return name
    return None
