"""``speed.kernel_cache``: the bound on the CPU matmul kernels oneDNN and ideep keep.

Each case runs in a fresh process, since both libraries read their capacity once, at the
process's first kernel."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ftlight.measure.hardware import cpu_has_fast_bf16
from ftlight.speed.kernel_cache import VARIABLES, bound_kernel_caches

# bf16 products of 300 shapes, after the bound (or none); prints the resident memory they added
SCRIPT = """
import sys, torch
from ftlight.speed.kernel_cache import bound_kernel_caches
bound_kernel_caches(None if sys.argv[1] == "none" else int(sys.argv[1]))
def anon():
    status = open("/proc/self/status").read()
    return int(status.split("RssAnon:")[1].split()[0]) // 1024
weight = torch.randn(576, 1536, dtype=torch.bfloat16)
before = anon()
with torch.no_grad():
    for rows in range(1, 301):
        torch.randn(rows, 576, dtype=torch.bfloat16) @ weight
print(anon() - before)
"""


def _added_mb(capacity: str) -> int:
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, capacity], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not cpu_has_fast_bf16(),
    reason="bf16 products run through oneDNN on a CPU with native bf16; the test reads "
    "/proc/self/status (Linux)",
)
def test_the_bound_keeps_the_kernels_of_many_shapes_from_piling_up() -> None:
    unbounded = _added_mb("none")
    assert unbounded > 60, f"300 shapes kept only {unbounded} MB of kernels: the premise"
    bounded = _added_mb("16")
    assert bounded < unbounded / 3, (bounded, unbounded)


def test_the_environment_set_by_the_user_wins(monkeypatch) -> None:
    monkeypatch.setenv(VARIABLES[0], "2048")
    monkeypatch.delenv(VARIABLES[1], raising=False)
    assert bound_kernel_caches(256) == {VARIABLES[0]: "2048", VARIABLES[1]: "256"}
    monkeypatch.delenv(VARIABLES[0])
    monkeypatch.delenv(VARIABLES[1])
    assert bound_kernel_caches(None) == {}  # null: the libraries' default, nothing set
