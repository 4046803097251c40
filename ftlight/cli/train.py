"""``ftlight-train``: compose the Hydra config and run ``ftlight.train.train`` on it."""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from ftlight.cli.report import run_reporting
from ftlight.cli.trial import trial
from ftlight.config import CONF_DIR, register
from ftlight.errors import FtlightError
from ftlight.hydra_record import drop_records
from ftlight.hydra_record import register as register_record
from ftlight.preemption import RunInterrupted
from ftlight.runfolder import is_launching_process
from ftlight.speed.allocator import describe as describe_allocator
from ftlight.sweeps.callback import in_sweep
from ftlight.train import train

register()
register_record()  # hydra.output_subdir: the staging folder of the run's .hydra/ record
log = logging.getLogger("ftlight")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _main(cfg: DictConfig) -> float | None:
    logging.getLogger("ftlight").setLevel(logging.INFO)
    log.info("%s", describe_allocator())
    try:
        with trial():  # a sweep's trial: its own world of ranks, its own W&B run
            result = train(cfg)
    except RunInterrupted as err:  # checkpointed; train() logged how to resume
        if is_launching_process():
            print(f"ftlight-train: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except FtlightError as err:
        log.error("%s", err)  # into the run's ftlight.log, if this run held its folder
        print(f"ftlight-train: {err}", file=sys.stderr)  # stdout may be piped elsewhere
        if in_sweep():
            raise  # the sweep runs its other trials; the comparison lists this one as failed
        raise SystemExit(2) from None
    finally:
        drop_records()  # what a run that never claimed its folder staged
    return result.metrics.get("after", {}).get("loss")


def main() -> None:
    """Console entry point (Hydra parses ``sys.argv``)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_reporting(_main, "ftlight-train")  # Hydra's own errors too: one message, exit 2
