"""The console commands re-execute once under tcmalloc/jemalloc/mimalloc."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from ftlight.speed import allocator

PROBE = (
    "import os, sys\n"
    "from pathlib import Path\n"
    "from ftlight.speed.allocator import use_fast_allocator\n"
    "probe_dir = os.environ.get('PROBE_DIR')\n"
    "use_fast_allocator([Path(probe_dir)] if probe_dir else None, bundled=not probe_dir)\n"
    "maps = open('/proc/self/maps').read()\n"
    "print(os.environ.get('LD_PRELOAD', ''))\n"
    "print(sys.argv[1:])\n"
    "print(sys.argv[1] in maps if len(sys.argv) > 1 else '')\n"
)


def _lib(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"\x7fELF")
    return path


def test_tcmalloc_is_preferred_over_jemalloc_in_any_folder(tmp_path: Path) -> None:
    _lib(tmp_path / "a", "libjemalloc.so.2")
    tc = _lib(tmp_path / "b", "libtcmalloc_minimal.so.4")
    assert allocator.find_allocator([tmp_path / "a", tmp_path / "b"]) == tc
    assert allocator.find_allocator([tmp_path / "a"]) == tmp_path / "a" / "libjemalloc.so.2"
    assert allocator.find_allocator([tmp_path / "empty"], bundled=False) is None


def test_auto_prepends_the_library_and_reruns_the_same_command(tmp_path: Path) -> None:
    je = _lib(tmp_path, "libjemalloc.so.2")
    argv, env = allocator.preload_command({"LD_PRELOAD": "/opt/other.so"}, [tmp_path])
    assert env["LD_PRELOAD"] == f"{je} /opt/other.so"
    assert argv == [sys.executable, *sys.orig_argv[1:]]
    # the re-executed process sees the marker and goes on
    assert allocator.preload_command(env, [tmp_path]) is None


@pytest.mark.parametrize(
    "env",
    [
        {"FTLIGHT_ALLOCATOR": "system"},
        {"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"},
        {"FTLIGHT_ALLOCATOR_ACTIVE": "/x/libjemalloc.so.2"},
    ],
)
def test_left_alone_when_asked_or_already_fast(tmp_path: Path, env: dict[str, str]) -> None:
    _lib(tmp_path, "libjemalloc.so.2")
    assert allocator.preload_command(env, [tmp_path]) is None


@pytest.mark.parametrize(
    ("args", "plain"),
    [
        (["model=tiny-llama", "speed=plain"], True),
        (["speed.malloc=false"], True),
        (["speed=plain", "speed.malloc=true"], False),  # the later one wins, as in Hydra
        (["speed=auto"], False),
        (["strategy=lora", "speed.decode=false"], False),
        ([], False),
    ],
)
def test_the_command_line_can_keep_the_c_librarys_malloc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], plain: bool
) -> None:
    """``speed=plain`` / ``speed.malloc=false`` on the command line: no restart; an explicit
    ``FTLIGHT_ALLOCATOR`` still wins."""
    _lib(tmp_path, "libjemalloc.so.2")
    monkeypatch.setattr(sys, "argv", ["ftlight-train", *args])
    assert allocator.plain_on_command_line(args) is plain
    assert (allocator.preload_command({}, [tmp_path]) is None) is plain
    lib = str(tmp_path / "libjemalloc.so.2")
    assert allocator.preload_command({"FTLIGHT_ALLOCATOR": lib}, [tmp_path]) is not None


def test_nothing_installed_means_no_reexec(tmp_path: Path) -> None:
    assert allocator.preload_command({}, [tmp_path], bundled=False) is None


BUNDLED = allocator.bundled_allocator()
NEEDS_BUNDLED = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "aarch64")),
    reason="cmeel-mimalloc is a dependency on Linux x86-64/aarch64 only (its wheels); the "
    "order and settings are tested everywhere with a stand-in library",
)


@NEEDS_BUNDLED
def test_the_bundled_mimalloc_is_installed_with_ftlight() -> None:
    assert BUNDLED is not None, "cmeel-mimalloc is missing: pip install -e . installs it"
    assert BUNDLED.name == "libmimalloc.so" and BUNDLED.stat().st_size > 100_000
    assert BUNDLED.read_bytes()[:4] == b"\x7fELF"


def _stand_in_bundled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake ``libmimalloc.so`` as the bundled library, so that the order and settings are
    checked on every platform; the real wheel's file is checked where it is a dependency."""
    lib = _lib(tmp_path / "wheel", "libmimalloc.so")
    monkeypatch.setattr(allocator, "bundled_allocator", lambda: lib)
    return lib


def test_system_libraries_come_first_then_the_bundled_mimalloc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mi = _stand_in_bundled(tmp_path, monkeypatch)
    tc = _lib(tmp_path / "sys", "libtcmalloc_minimal.so.4")
    assert allocator.find_allocator([tmp_path / "sys"]) == tc
    assert allocator.find_allocator([tmp_path / "empty"]) == mi
    assert allocator.find_allocator([tmp_path / "empty"], bundled=False) is None


def test_mimalloc_keeps_freed_memory_unless_the_user_says_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mi = _stand_in_bundled(tmp_path, monkeypatch)
    _, env = allocator.preload_command({}, [tmp_path])
    assert env["LD_PRELOAD"] == str(mi) and env["MIMALLOC_PURGE_DELAY"] == "3600000"
    _, env = allocator.preload_command({"MIMALLOC_PURGE_DELAY": "10"}, [tmp_path])
    assert env["MIMALLOC_PURGE_DELAY"] == "10"
    # tcmalloc/jemalloc get no mimalloc settings
    _lib(tmp_path, "libjemalloc.so.2")
    _, env = allocator.preload_command({}, [tmp_path])
    assert "MIMALLOC_PURGE_DELAY" not in env


def test_no_bundled_library_where_the_wheel_is_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    assert allocator.bundled_allocator() is None


def test_a_missing_explicit_library_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="FTLIGHT_ALLOCATOR='/nope/libjemalloc.so.2': no such"):
        allocator.preload_command({"FTLIGHT_ALLOCATOR": "/nope/libjemalloc.so.2"}, [tmp_path])


def _stand_in_library() -> Path:
    """A real shared library that a bare interpreter does not load: torch's libc10, present
    wherever ftlight is installed. Finding it mapped after the restart proves the preload."""
    import torch

    lib = Path(torch.__file__).parent / "lib" / "libc10.so"
    assert lib.is_file(), lib
    return lib


def _probe(env_extra: dict[str, str], *args: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "FTLIGHT_ALLOCATOR")}
    env.pop("FTLIGHT_ALLOCATOR_ACTIVE", None)
    env.pop("PROBE_DIR", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        env={**env, **env_extra},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return out.stdout.splitlines()


LINUX_ONLY = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="LD_PRELOAD restarts are Linux-only; elsewhere the commands keep the system malloc "
    "(test_other_platforms_keep_the_system_malloc)",
)


def test_other_platforms_keep_the_system_malloc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _lib(tmp_path, "libtcmalloc_minimal.so.4")
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator.preload_command({}, [tmp_path]) is None


@LINUX_ONLY
def test_the_process_really_restarts_with_the_library_loaded() -> None:
    lib = _stand_in_library()
    preload, argv, loaded = _probe({"FTLIGHT_ALLOCATOR": str(lib)}, str(lib), "--flag")
    assert preload == str(lib)
    assert argv == f"[{str(lib)!r}, '--flag']"
    assert loaded == "True"


@LINUX_ONLY
def test_auto_finds_an_installed_allocator_and_restarts_under_it(tmp_path: Path) -> None:
    # a stand-in under tcmalloc's file name, in a folder searched instead of the system's
    fake = tmp_path / "libtcmalloc_minimal.so.4"
    fake.symlink_to(_stand_in_library())
    preload, _, loaded = _probe({"PROBE_DIR": str(tmp_path)}, str(_stand_in_library()))
    assert preload == str(fake) and loaded == "True"
    # and without one, no restart
    preload, _, loaded = _probe({"PROBE_DIR": str(tmp_path / "none")}, str(_stand_in_library()))
    assert preload == "" and loaded == "False"


@pytest.mark.skipif(
    allocator.find_allocator() is None,
    reason="no tcmalloc/jemalloc (system packages) and no cmeel-mimalloc (Linux x86-64/aarch64 "
    "only); the same restart is tested with a stand-in in "
    "test_auto_finds_an_installed_allocator_and_restarts_under_it",
)
def test_auto_loads_the_allocator_installed_on_this_machine() -> None:
    lib = allocator.find_allocator()
    preload, _, loaded = _probe({}, str(lib))
    assert preload == str(lib) and loaded == "True"


@NEEDS_BUNDLED
def test_the_restarted_process_runs_on_mimalloc_with_its_settings() -> None:
    # mimalloc's own report of its options (MIMALLOC_VERBOSE) shows what the process runs with
    skip = ("LD_PRELOAD", "FTLIGHT_ALLOCATOR", "MIMALLOC_", "PROBE_DIR")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    script = (
        "from pathlib import Path\n"
        "from ftlight.speed.allocator import use_fast_allocator\n"
        "use_fast_allocator([Path('/nonexistent')])\n"
        "print(open('/proc/self/maps').read().count('libmimalloc'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "MIMALLOC_VERBOSE": "1"},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert int(out.stdout.strip()) > 0
    assert "option 'purge_delay': 3600000" in out.stderr


_RELEASE = (
    "import ctypes, sys\n"
    "from pathlib import Path\n"
    "from ftlight.speed.allocator import release_free_memory, use_fast_allocator\n"
    "if sys.argv[1] == 'mimalloc':\n"
    "    use_fast_allocator([Path('/nonexistent')])\n"
    "def anon():\n"
    "    status = open('/proc/self/status').read()\n"
    "    return int(status.split('RssAnon:')[1].split()[0]) // 1024\n"
    "libc = ctypes.CDLL(None)\n"
    "libc.malloc.restype = libc.memset.restype = ctypes.c_void_p\n"
    "if sys.argv[1] == 'glibc':  # blocks in the heap, kept there when freed (not unmapped)\n"
    "    libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD\n"
    "    libc.mallopt(-1, 1 << 40)  # M_TRIM_THRESHOLD\n"
    "sizes = [300_000 + 4096 * (i % 7) for i in range(3000)]\n"
    "blocks = [libc.malloc(n) for n in sizes]\n"
    "for block, n in zip(blocks, sizes):\n"
    "    libc.memset(ctypes.c_void_p(block), 1, n)\n"
    "held = anon()\n"
    "for block in blocks:\n"
    "    libc.free(ctypes.c_void_p(block))\n"
    "freed = anon()\n"
    "print(held, freed, release_free_memory(), anon())\n"
)


@pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="memory is handed back on Linux only (elsewhere the call does nothing, tested "
    "below), and resident memory is read from /proc/self/status",
)
@pytest.mark.parametrize(
    "malloc",
    [pytest.param("mimalloc", marks=NEEDS_BUNDLED), "glibc"],
)
def test_free_memory_goes_back_to_the_kernel_between_phases(malloc: str) -> None:
    """Freed blocks stay with the malloc (mimalloc keeps them for reuse; glibc keeps heap
    blocks below its trim threshold) until ``release_free_memory`` hands them back."""
    skip = ("LD_PRELOAD", "FTLIGHT_ALLOCATOR", "MIMALLOC_", "PROBE_DIR")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    if malloc == "glibc":
        env["FTLIGHT_ALLOCATOR"] = "system"
    out = subprocess.run(
        [sys.executable, "-c", _RELEASE, malloc],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    held, freed, call, after = out.stdout.split()
    assert call == ("mi_collect" if malloc == "mimalloc" else "malloc_trim")
    assert int(held) > 600  # MB written
    assert int(freed) > 600  # kept by the malloc after the frees: what the call is for
    assert int(after) < 100


def test_free_memory_is_left_alone_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.release_free_memory() is None


def test_the_log_line_names_the_library_or_says_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FTLIGHT_ALLOCATOR_ACTIVE", "/usr/lib/libjemalloc.so.2")
    monkeypatch.setenv("MIMALLOC_PURGE_DELAY", "-1")
    assert allocator.describe() == "host malloc: /usr/lib/libjemalloc.so.2"
    monkeypatch.setenv("FTLIGHT_ALLOCATOR_ACTIVE", "/x/libmimalloc.so")
    assert allocator.describe() == "host malloc: /x/libmimalloc.so (MIMALLOC_PURGE_DELAY=-1)"
    monkeypatch.delenv("FTLIGHT_ALLOCATOR_ACTIVE")
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setenv("FTLIGHT_ALLOCATOR", "system")
    assert allocator.describe() == "host malloc: the C library's"
    monkeypatch.setenv("FTLIGHT_ALLOCATOR", "auto")
    if sys.platform.startswith("linux"):
        assert "pip install cmeel-mimalloc" in allocator.describe()
        assert "apt-get install libtcmalloc-minimal4" in allocator.describe()
