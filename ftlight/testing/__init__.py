"""Testing support shipped with ftlight: tiny-model helpers and the strategy conformance suite.

A strategy plugin's test file runs the whole suite against its strategy with::

    from ftlight.testing import StrategyConformance

    class TestConformance(StrategyConformance):
        strategy = "mine"
"""

from ftlight.testing.conformance import StrategyConformance
from ftlight.testing.helpers import (
    BASE,
    DATA,
    QUICK_FIT,
    QUICK_RUN,
    SETUPS,
    NoDropout,
    Probe,
    TrainedRun,
    add_setup,
    compose_config,
    eval_logits,
    fit,
    isolated_cache,
    setup_overrides,
    snapshot,
    train_with_probe,
)
from ftlight.testing.pause import PauseAtStep

__all__ = [
    "QUICK_RUN",
    "BASE",
    "DATA",
    "PauseAtStep",
    "QUICK_FIT",
    "SETUPS",
    "NoDropout",
    "Probe",
    "StrategyConformance",
    "TrainedRun",
    "add_setup",
    "compose_config",
    "eval_logits",
    "fit",
    "isolated_cache",
    "setup_overrides",
    "snapshot",
    "train_with_probe",
]
