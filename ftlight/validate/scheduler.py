"""Checks against the scheduler that started this process: a SLURM job shaped otherwise than
the trainer config would make Lightning wait forever for ranks that never come.

Under SLURM, Lightning takes the world from the job step (``SLURM_NTASKS``, ``SLURM_PROCID``)
and its devices and nodes from the trainer config, and never compares the two; nor does it
notice a script that forgot ``srun`` (one process where the job has several tasks).
"""

from __future__ import annotations

import os
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ftlight.errors import ConfigError
from ftlight.validate.common import ABSENT, select, show


def check_scheduler(cfg: DictConfig, env: dict[str, str] | None = None) -> None:
    """Under SLURM (``env``: ``os.environ``): the job step runs one task per device of the
    trainer config, ``trainer.devices`` on each of ``trainer.num_nodes`` nodes."""
    check_launcher(cfg)
    env = dict(os.environ) if env is None else env
    if "SLURM_NTASKS" not in env or env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return  # not a SLURM task, or an interactive allocation Lightning does not read
    tasks = _int(env.get("SLURM_NTASKS"))
    job = env.get("SLURM_JOB_ID", "?")
    if "SLURM_STEP_ID" not in env and tasks is not None and tasks > 1:
        raise ConfigError(
            f"this process runs in the batch script of SLURM job {job}, which has {tasks} "
            "tasks, but srun did not start it: it is the only process, and training would "
            f"wait forever for the other {tasks - 1}. Start it with srun (srun ftlight-train "
            "...; launch/slurm.sbatch does), or submit the job with one task "
            "(--nodes=1 --ntasks-per-node=1)"
        )
    devices = _devices_per_node(cfg, env)
    per_node = _tasks_per_node(env)
    if devices is not None and per_node is not None and devices != per_node:
        shown = show(select(cfg, "trainer.devices"))
        raise ConfigError(
            f"trainer.devices={shown} ({devices} per node) but SLURM job {job} runs {per_node} "
            f"task(s) per node; Lightning needs one task "
            "per device and would wait forever for the missing ranks. Set "
            f"trainer.devices={per_node}, or submit with --ntasks-per-node={devices} "
            "(hydra/launcher=slurm sizes each job from trainer.devices)"
        )
    nodes = _int(
        env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES")
    )
    wanted = select(cfg, "trainer.num_nodes")
    wanted = 1 if wanted in (ABSENT, None) else _int(wanted)
    if nodes is not None and wanted is not None and nodes != wanted:
        raise ConfigError(
            f"trainer.num_nodes={wanted} but SLURM job {job} runs on {nodes} node(s) "
            f"(SLURM_NNODES); Lightning would wait forever for ranks that never come. "
            f"Set trainer.num_nodes={nodes}, or submit with --nodes={wanted} "
            "(hydra/launcher=slurm sizes each job from trainer.num_nodes)"
        )


def check_launcher(cfg: DictConfig) -> None:
    """A launcher other than Hydra's basic one is chosen only for a sweep: Hydra ignores it in
    a single run, which would then train here instead of where the user meant."""
    choices, mode = _hydra_choices(cfg)
    launcher = choices.get("hydra/launcher")
    if mode == "RUN" and launcher not in (None, "basic"):
        raise ConfigError(
            f"hydra/launcher={launcher} launches the trials of a sweep, and Hydra leaves it "
            "unused in a single run, which would train here, on this machine. Add -m: "
            f"ftlight-train -m hydra/launcher={launcher} <overrides>"
        )


def _hydra_choices(cfg: DictConfig) -> tuple[dict[str, Any], str | None]:
    """The config groups chosen and the run mode (``RUN``, ``MULTIRUN``) of this run."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get() if HydraConfig.initialized() else cfg.get("hydra")
    if hydra is None:
        return {}, None
    choices = OmegaConf.select(hydra, "runtime.choices", default=None) or {}
    mode = OmegaConf.select(hydra, "mode", default=None)
    return dict(choices), None if mode is None else getattr(mode, "name", str(mode))


def _int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _tasks_per_node(env: dict[str, str]) -> int | None:
    """Tasks per node of this job step (its layout, ``2(x3)``, under srun; else
    ``SLURM_NTASKS_PER_NODE`` or the job's layout), when every node runs the same number;
    None when they differ."""
    step = "SLURM_STEP_ID" in env  # srun's step may be smaller than the job (srun -n 1)
    if not step and (given := _int(env.get("SLURM_NTASKS_PER_NODE"))) is not None:
        return given
    layout = env.get("SLURM_STEP_TASKS_PER_NODE" if step else "SLURM_TASKS_PER_NODE") or ""
    counts = {int(n) for n in re.findall(r"(\d+)(?:\(x\d+\))?", layout)}
    return counts.pop() if len(counts) == 1 else None


def _devices_per_node(cfg: DictConfig, env: dict[str, str]) -> int | None:
    """The processes Lightning expects on each node for ``trainer.devices`` (None: unknown)."""
    devices = select(cfg, "trainer.devices")
    if devices in (ABSENT, None):
        return 1
    if isinstance(devices, list):
        return len(devices)
    text = str(devices).strip()
    if text in ("auto", "-1"):
        accelerator = str(select(cfg, "trainer.accelerator")).lower()
        if accelerator == "cpu":
            return 1
        import torch

        return torch.cuda.device_count() or (1 if accelerator == "auto" else None)
    if "," in text:
        return len([part for part in text.split(",") if part.strip()])
    return _int(text)
