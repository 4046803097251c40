"""``hydra/launcher=slurm``: one SLURM job per sweep trial, sized from that trial's trainer config,
requeued to resume from its own checkpoint.

hydra-submitit-launcher submits all the trials of a sweep as one job array with the resources
of its ``hydra.launcher`` settings. Lightning needs one SLURM task per device, ``trainer.devices``
tasks on each of ``trainer.num_nodes`` nodes, and a sweep may change either; so this launcher
composes each trial's config first and submits the trial as a job of its own with
``nodes = trainer.num_nodes``, ``tasks_per_node = trainer.devices`` and ``gpus_per_node =
trainer.devices`` (none with ``trainer.accelerator=cpu``; ``trainer.devices=auto`` counts
``hydra.launcher.gpus_per_node``, or 1). A ``nodes`` or ``tasks_per_node`` set in
``hydra.launcher`` must agree with the trainer; ``gpus_per_node`` may be set freely.

A trial SLURM runs again (submitit's requeue near the time limit, whose ``checkpoint`` hook
resubmits the job; preemption; ``scontrol requeue``) runs as the same trial in the same folder
with ``ckpt_path=auto``: it resumes from that folder's newest checkpoint, into the same W&B run
(``ftlight.loggers.wandb_run_id``). ``ftlight.preemption`` checkpoints at a step boundary first.

Where SLURM keeps no accounting (no ``slurmdbd``: ``sacct`` fails), submitit cannot see the end
of a job that left no result (cancelled, killed) and would wait for it forever; this launcher
then reads the job's state from ``scontrol``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from ftlight.errors import ConfigError

log = logging.getLogger(__name__)

RESUME = "ckpt_path=auto"
"""The override a trial runs with when SLURM runs it again."""

#: ``hydra.launcher`` settings with submitit names of their own (the rest are sbatch's)
_GENERIC = {"name": "job_name", "timeout_min": "time", "tasks_per_node": "ntasks_per_node"}
#: scontrol job states after which a job never runs again
_ENDED = {
    *("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"),
    *("BOOT_FAIL", "DEADLINE"),
}


@dataclass
class FtlightSlurmConf(SlurmQueueConf):
    """hydra-submitit-launcher's SLURM settings; the job's size comes from each trial."""

    _target_: str = "hydra_plugins.ftlight_slurm._launcher.SlurmLauncher"
    nodes: int | None = None  # null: trainer.num_nodes
    tasks_per_node: int | None = None  # null: trainer.devices (one task per device)
    gpus_per_node: int | None = None  # null: trainer.devices, none with trainer.accelerator=cpu


ConfigStore.instance().store(
    group="hydra/launcher", name="ftlight_slurm", node=FtlightSlurmConf, provider="ftlight"
)


@dataclass(frozen=True)
class JobSize:
    """What a trial asks SLURM for: nodes, tasks (processes) per node, GPUs per node."""

    nodes: int
    tasks_per_node: int
    gpus_per_node: int

    def __str__(self) -> str:
        gpus = f", {self.gpus_per_node} GPUs" if self.gpus_per_node else ", CPUs only"
        return f"{self.nodes} node(s) x {self.tasks_per_node} task(s){gpus}"


def devices_per_node(devices: Any, gpus_per_node: int | None = None) -> int:
    """The processes Lightning starts on each node for ``trainer.devices``: a count, a list of
    device ids, or ``auto``/-1 (the GPUs the job gets on a node, ``gpus_per_node``, else 1)."""
    if isinstance(devices, ListConfig):
        devices = list(devices)
    if isinstance(devices, list | tuple) and devices:
        return len(devices)
    text = str(devices).strip()
    if text in ("auto", "-1"):
        return int(gpus_per_node) if gpus_per_node else 1
    if "," in text and all(part.strip().isdigit() for part in text.split(",") if part.strip()):
        return len([part for part in text.split(",") if part.strip()])
    if not isinstance(devices, bool) and text.isdigit() and int(text) > 0:
        return int(text)
    raise ConfigError(
        f"trainer.devices={devices!r} cannot size a SLURM job: set it to the number of devices "
        "(processes) per node, e.g. trainer.devices=4"
    )


def trial_size(trainer: Mapping[str, Any], launcher: Mapping[str, Any]) -> JobSize:
    """One trial's job size from its trainer settings (``devices``, ``num_nodes``,
    ``accelerator``), checked against what ``hydra.launcher`` sets explicitly."""
    gpus_given = launcher.get("gpus_per_node")
    tasks = devices_per_node(trainer.get("devices", 1), gpus_given)
    try:
        raw = trainer.get("num_nodes")
        nodes = 1 if raw is None else int(raw)
    except (TypeError, ValueError):
        nodes = 0
    if nodes < 1:
        raise ConfigError(
            f"trainer.num_nodes={trainer.get('num_nodes')!r} must be a whole number of nodes, 1 "
            "or more"
        )
    on_cpu = str(trainer.get("accelerator", "auto")).lower() == "cpu"
    gpus = int(gpus_given) if gpus_given is not None else (0 if on_cpu else tasks)
    for key, value, source in (
        ("nodes", nodes, "trainer.num_nodes"),
        ("tasks_per_node", tasks, "trainer.devices"),
    ):
        given = launcher.get(key)
        if given is not None and int(given) != value:
            raise ConfigError(
                f"hydra.launcher.{key}={given} disagrees with {source} ({value}): Lightning runs "
                f"one SLURM task per device, so the job's {key} must be {value}. Leave "
                f"hydra.launcher.{key} unset (it follows {source}), or set {source}={given}"
            )
    return JobSize(nodes=nodes, tasks_per_node=tasks, gpus_per_node=gpus)


def sbatch_parameters(settings: Mapping[str, Any], size: JobSize) -> dict[str, Any]:
    """submitit's ``SlurmExecutor`` parameters for one trial: the launcher settings with their
    submitit names, and the trial's size."""
    params: dict[str, Any] = {}
    skip = {"submitit_folder", "max_num_timeout", "nodes", "tasks_per_node", "gpus_per_node"}
    for key, value in settings.items():
        if key in skip:
            continue
        if key == "mem_gb":
            if value is not None:
                params["mem"] = _memory(float(value))
            continue
        params[_GENERIC.get(key, key)] = value
    params["nodes"] = size.nodes
    params["ntasks_per_node"] = size.tasks_per_node
    params["gpus_per_node"] = size.gpus_per_node or None  # no --gpus-per-node on CPUs
    return params


def _memory(gb: float) -> str:
    return f"{int(gb)}GB" if gb.is_integer() else f"{int(gb * 1024)}MB"


def resume_overrides(overrides: Sequence[str], trial_dir: Path | None) -> list[str]:
    """A trial's overrides for running it again: ``ckpt_path=auto`` (its folder's newest
    checkpoint), unless the trial was given a checkpoint of its own to start from and its
    folder holds none yet (then it starts from that one again)."""
    from ftlight.resume import newest_checkpoint

    given = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] == "ckpt_path"]
    if given and trial_dir is not None and newest_checkpoint(trial_dir) is None:
        return list(overrides)
    return [o for o in overrides if o not in given] + [RESUME]


def restarted() -> bool:
    """Whether SLURM runs this job again (``SLURM_RESTART_COUNT``: requeued)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0
    except ValueError:
        return False


class SlurmLauncher(BaseSubmititLauncher):
    """hydra-submitit-launcher's SLURM launcher, one job per trial (see the module docstring)."""

    _EXECUTOR = "slurm"

    def __call__(
        self,
        sweep_overrides: list[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict[type, Singleton],
    ) -> JobReturn:
        """Run one trial on the cluster (every task of its job); a rerun resumes it."""
        if restarted() and RESUME not in sweep_overrides:
            Singleton.set_state(singleton_state)
            trial_dir = self._trial_dir(sweep_overrides, job_dir_key, job_num)
            sweep_overrides = resume_overrides(sweep_overrides, trial_dir)
        return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's hook before it requeues the job: the same trial, resuming."""
        import submitit

        overrides, job_dir_key, job_num, *rest = args
        trial_dir = self._trial_dir(overrides, job_dir_key, job_num)
        resumed = resume_overrides(overrides, trial_dir)
        return submitit.helpers.DelayedSubmission(
            self, resumed, job_dir_key, job_num, *rest, **kwargs
        )

    def _trial_dir(self, overrides: Sequence[str], job_dir_key: str, job_num: int) -> Path | None:
        """The trial's folder, as Hydra's ``run_job`` names it (None if it cannot be known)."""
        assert self.hydra_context is not None and self.config is not None
        try:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg.hydra.job):
                cfg.hydra.job.num = job_num
            sweep = OmegaConf.select(cfg, job_dir_key)
            sub = OmegaConf.select(cfg, "hydra.sweep.subdir")
        except Exception as err:  # the folder is only needed to keep a given ckpt_path
            log.warning("could not work out the trial's folder (%s)", err)
            return None
        return Path(str(sweep)) / str(sub)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        """Submit every trial as a job of its own size; wait for all of them."""
        import submitit

        assert self.config is not None and self.hydra_context is not None
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if missing:  # submitit's own refusal is a RuntimeError from inside the sweep
            raise ConfigError(
                f"hydra/launcher=slurm submits each trial with sbatch, but {' and '.join(missing)}"
                f" {'is' if len(missing) == 1 else 'are'} not on this machine's PATH: this is not "
                "a SLURM login node. Run the sweep "
                "where SLURM is installed, or leave out hydra/launcher=slurm to run its trials "
                "here, one after another"
            )
        executor = submitit.SlurmExecutor(
            folder=self.params["submitit_folder"],
            max_num_timeout=int(self.params.get("max_num_timeout") or 0),
        )
        executor.job_class = _job_class()  # type: ignore[misc]
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info("Submitit 'slurm' sweep output dir : %s", sweep_dir)
        sizes = []
        for overrides in job_overrides:  # every trial checked before any is submitted
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            sizes.append(trial_size(_trainer_settings(cfg), self.params))
        jobs = []
        for idx, (overrides, size) in enumerate(
            zip(job_overrides, sizes, strict=True), start=initial_job_idx
        ):
            log.info("\t#%d : %s  (%s)", idx, " ".join(filter_overrides(overrides)), size)
            executor.update_parameters(**sbatch_parameters(self.params, size))
            args = (list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}")
            jobs.append(executor.submit(self, *args, Singleton.get_state()))
        return [job.results()[0] for job in jobs]


def register() -> None:
    """Make ``hydra/launcher=slurm`` available to Hydra (importing this module stores its
    config): Hydra's plugin scan leaves this module alone (see the package docstring)."""
    from hydra.core.plugins import Plugins

    Plugins.instance().register(SlurmLauncher)


def _trainer_settings(cfg: DictConfig) -> dict[str, Any]:
    """The trainer settings that size a job, resolved where they can be."""
    out = {}
    for key in ("devices", "num_nodes", "accelerator"):
        try:
            value = OmegaConf.select(cfg, f"trainer.{key}")
        except Exception:  # an interpolation only the job can resolve
            value = OmegaConf.select(cfg, f"trainer.{key}", throw_on_resolution_failure=False)
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
        if value is not None:
            out[key] = value
    return out


def scontrol_states(job_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """``{job id: {"JobID", "State"}}`` from ``scontrol show job`` (array tasks as
    ``<array>_<task>``); a job SLURM no longer knows is ``PURGED``, one still waiting, held or
    running ``RUNNING`` or ``PENDING``."""
    states: dict[str, dict[str, str]] = {}
    for job in job_ids:
        try:
            done = subprocess.run(
                ["scontrol", "show", "job", "-o", str(job)],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode != 0:
            if "Invalid job id" in done.stderr:
                states[str(job)] = {"JobID": str(job), "State": "PURGED"}
            continue
        for line in done.stdout.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            array, task = fields.get("ArrayJobId"), fields.get("ArrayTaskId")
            key = f"{array}_{task}" if array and task and task.isdigit() else fields.get("JobId")
            if not key:
                continue
            state = fields.get("JobState", "UNKNOWN")
            if state not in _ENDED and state != "PENDING":
                state = "RUNNING"  # configuring, completing, requeued, held...: not over
            states[key] = {"JobID": key, "State": state}
    return states


def _job_class() -> type:
    """submitit's ``SlurmJob`` with a watcher that falls back on ``scontrol``."""
    from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

    class Watcher(SlurmInfoWatcher):
        """``sacct``, or ``scontrol`` when ``sacct`` fails (no accounting)."""

        def update(self) -> None:
            command = self._make_command()
            if command is None:
                return
            self._num_calls += 1
            try:
                output = subprocess.run(
                    command, capture_output=True, check=True, timeout=120
                ).stdout
                info = self.read_info(output)
            except (OSError, subprocess.SubprocessError):
                pending = {x.split("_")[0] for x in self._registered - self._finished}
                info = scontrol_states(sorted(pending))
            self._info_dict.update(info)
            self._last_status_check = time.time()
            for job_id in self._registered - self._finished:
                if self.is_done(job_id, mode="cache"):
                    self._finished.add(job_id)

    class Job(SlurmJob):
        watcher = Watcher(delay_s=60)

    return Job
