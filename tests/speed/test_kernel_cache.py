"""``speed.kernel_cache``: the bound on the CPU matmul kernels oneDNN and ideep keep.

Each case runs in a fresh process, since both libraries read their capacity once, at the
process's first kernel."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from ftlight.measure.hardware import cpu_has_fast_bf16
from ftlight.speed.kernel_cache import VARIABLES, bound_kernel_caches

# 300 shapes of a oneDNN product after the bound (or none); prints the resident memory added
SCRIPT = """
import sys, torch
from ftlight.speed.kernel_cache import bound_kernel_caches
bound_kernel_caches(None if sys.argv[1] == "none" else int(sys.argv[1]))
def anon():
    status = open("/proc/self/status").read()
    return int(status.split("RssAnon:")[1].split()[0]) // 1024
if sys.argv[2] == "bf16-matmul":  # the training and evaluation products on a bf16 CPU
    weight = torch.randn(576, 1536, dtype=torch.bfloat16)
    product = lambda n: torch.randn(n, 576, dtype=torch.bfloat16) @ weight
else:  # fp32 convolutions run through oneDNN on every CPU PyTorch builds it for
    weight = torch.randn(64, 64, 3, 3)
    product = lambda n: torch.nn.functional.conv2d(torch.randn(1, 64, 8, n + 2), weight)
before = anon()
with torch.no_grad():
    for n in range(1, 301):
        product(n)
print(anon() - before)
"""


def _added_mb(capacity: str, workload: str) -> int:
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, capacity, workload], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not torch.backends.mkldnn.is_available(),
    reason="resident memory is read from /proc/self/status (Linux), and the caches are "
    "oneDNN's (a PyTorch build without it has none to bound)",
)
@pytest.mark.parametrize(
    "workload",
    [
        pytest.param(
            "bf16-matmul",
            marks=pytest.mark.skipif(
                not cpu_has_fast_bf16(),
                reason="PyTorch sends bf16 products to oneDNN only on a CPU with native bf16; "
                "the fp32-conv case tests the bound on this one",
            ),
        ),
        "fp32-conv",
    ],
)
def test_the_bound_keeps_the_kernels_of_many_shapes_from_piling_up(workload: str) -> None:
    unbounded = _added_mb("none", workload)
    assert unbounded > 60, f"300 shapes kept only {unbounded} MB of kernels: the premise"
    bounded = _added_mb("16", workload)
    assert bounded < unbounded / 3, (bounded, unbounded)


def test_the_environment_set_by_the_user_wins(monkeypatch) -> None:
    monkeypatch.setenv(VARIABLES[0], "2048")
    monkeypatch.delenv(VARIABLES[1], raising=False)
    assert bound_kernel_caches(256) == {VARIABLES[0]: "2048", VARIABLES[1]: "256"}
    monkeypatch.delenv(VARIABLES[0])
    monkeypatch.delenv(VARIABLES[1])
    assert bound_kernel_caches(None) == {}  # null: the libraries' default, nothing set
