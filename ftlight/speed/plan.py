"""The speed plan: which of ftlight's speed parts a run uses (the ``speed`` config group).

Each part makes a step or an evaluation faster without changing what it computes (within
floating-point summation order), and each can be switched off alone (``speed.<part>=false``);
``speed=plain`` switches every one off: transformers' own forward, loss and ``generate``, peft's
own LoRA forward and adapter branch, autocast's own casts and the C library's malloc. That
plain path is the reference the speed parts are tested against (``tests/speed/test_plain.py``).

Parts that rely on a library's internals name the versions they were verified on; with another
version installed they stand aside, and the run's log says so in one line per part.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import os
from dataclasses import dataclass
from functools import cache

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

log = logging.getLogger("ftlight")

#: what each switch does, for the log, the docs and error messages
PARTS: dict[str, str] = {
    "frozen_bf16": "frozen linear weights kept in bf16 under bf16-mixed (autocast casts less)",
    "recompute_activation": "gated MLPs recompute act(gate) in backward instead of keeping it",
    "grouped_kv": "SDPA takes grouped key/value heads under a mask on CPU (no head expansion)",
    "sliced_loss": "only labelled positions are projected onto the vocabulary",
    "head_loss": "the loss projects the hidden states itself, a block of positions at a time",
    "share_prefix": "the opening every row of a batch shares runs once per batch",
    "shared_opening": "evaluation attends to the shared opening once (a cascade attention)",
    "decode": "ftlight's cached greedy decoder instead of model.generate",
    "lora_fold": "LoRA adapters folded into their weights for evaluation (put back after)",
    "lora_fused": "the LoRA product added inside the base layer's matrix product",
    "malloc": "the command restarts on tcmalloc/jemalloc/mimalloc (command line only)",
}

#: the library versions each part was verified on (``tests/speed/test_plain.py`` passing);
#: outside them the part stands aside
VERIFIED: dict[str, dict[str, str]] = {
    "recompute_activation": {"transformers": ">=5.25,<6"},
    "grouped_kv": {"transformers": ">=5.25,<6"},
    "sliced_loss": {"transformers": ">=5.25,<6"},
    "head_loss": {"transformers": ">=5.25,<6"},
    "share_prefix": {"transformers": ">=5.25,<6"},
    "shared_opening": {"transformers": ">=5.25,<6"},
    "decode": {"transformers": ">=5.25,<6"},
    "lora_fold": {"peft": ">=0.21,<1"},
    "lora_fused": {"peft": ">=0.21,<1"},
}


@cache
def _installed(package: str) -> Version | None:
    try:
        return Version(importlib.metadata.version(package))
    except (importlib.metadata.PackageNotFoundError, InvalidVersion):
        return None


def outside_verified(part: str) -> str | None:
    """Why ``part`` stands aside with the installed libraries (None: it may run).
    ``FTLIGHT_SPEED_ANY_VERSION=1`` runs every part whatever the versions (to check a new
    release against the plain path: ``benchmarks/latest_libraries.sh``)."""
    if os.environ.get("FTLIGHT_SPEED_ANY_VERSION") == "1":
        return None
    for package, spec in VERIFIED.get(part, {}).items():
        version = _installed(package)
        if version is not None and version not in SpecifierSet(spec):
            return f"{package} {version} is outside the versions it was verified on ({spec})"
    return None


@dataclass(frozen=True)
class SpeedPlan:
    """The run's speed switches (``conf/speed/auto.yaml``; ``PARTS`` says what each does).

    ``attention_kernel`` picks the training steps' attention kernel (``torch``: PyTorch's own
    choice); ``kernel_cache`` bounds how many CPU matmul kernels oneDNN and ideep keep
    (``ftlight.speed.kernel_cache``; None: their default, 1,024 each);
    ``activation_checkpointing`` and ``compile`` trade speed for memory and are off by default.
    """

    frozen_bf16: bool = True
    recompute_activation: bool = True
    grouped_kv: bool = True
    sliced_loss: bool = True
    head_loss: bool = True
    share_prefix: bool = True
    shared_opening: bool = True
    decode: bool = True
    lora_fold: bool = True
    lora_fused: bool = True
    malloc: bool = True
    attention_kernel: str = "auto"
    kernel_cache: int | None = 256
    activation_checkpointing: bool = False
    compile: bool = False

    def checked(self) -> SpeedPlan:
        """This plan with the parts that stand aside on the installed libraries turned off,
        one log line for each."""
        off = {}
        for part in PARTS:
            why = getattr(self, part) and outside_verified(part)
            if why:
                log.info("speed.%s stands aside: %s", part, why)
                off[part] = False
        return dataclasses.replace(self, **off)

    def parts_on(self) -> list[str]:
        """The switches that are on, in ``PARTS`` order."""
        return [part for part in PARTS if getattr(self, part)]


#: every switch of the plan, ``speed.<name>`` in the config
SWITCHES = tuple(field.name for field in dataclasses.fields(SpeedPlan))


#: every part off: the reference path (``speed=plain``)
PLAIN = SpeedPlan(**dict.fromkeys(PARTS, False), attention_kernel="torch", kernel_cache=None)
