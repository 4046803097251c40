"""Data never becomes config: what ftlight reads from folders reaches objects as plain values.

Every place that reads a model folder, a run folder or a checkpoint's name into a run is
given ``_target_`` payloads (``torch.load`` of a pickle, ``builtins.open``,
``shutil.copyfile``: each would create a marker) and text that looks like an interpolation.
The payloads are refused with the file and key named, or stay inert text; the marker never
appears. Each payload is also shown to create the marker when instantiated, so the tests
could fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ftlight.testing import BASE
from ftlight.testing.helpers import DATA

ENV_VALUE = "resolved-from-the-environment"
#: class names that would resolve if they ever became config
LABELS = {
    "negative": "${model.name_or_path}",
    "neutral": "${oc.env:HOME}",
    "positive": "${oc.env:FTLIGHT_TRUST_VALUE}",
}
QUICK = [*BASE, "trainer.max_steps=1", "trainer.max_epochs=-1", "eval.before=false"]
QUICK += ["eval.general=null", "eval.few_shot=0", "data.max_length=512"]


class Payload:
    """Unpickling this creates the folder ``marker``: what a crafted file would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (os.mkdir, (self.marker,))


def _payloads(folder: Path, marker: Path) -> dict[str, dict[str, Any]]:
    """Config nodes that create ``marker`` when ``instantiate`` builds them."""
    torch.save(Payload(marker), folder / "labels.bin")
    return {
        "torch.load": {
            "_target_": "torch.load",
            "f": "${model.name_or_path}/labels.bin",
            "weights_only": False,
        },
        "builtins.open": {"_target_": "builtins.open", "file": str(marker), "mode": "w"},
        "shutil.copyfile": {
            "_target_": "shutil.copyfile",
            "src": "${model.name_or_path}/config.json",
            "dst": str(marker),
        },
    }


def _assert_live(payload: dict[str, Any], folder: Path, marker: Path) -> None:
    """The payload does create the marker once it is config that ``instantiate`` walks."""
    cfg = OmegaConf.create({"model": {"name_or_path": str(folder)}, "label": payload})
    result = instantiate(cfg.label)
    if hasattr(result, "close"):
        result.close()
    assert marker.exists()


def _cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FTLIGHT_TRUST_VALUE": ENV_VALUE}
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _data(folder: Path) -> list[str]:
    """The review fixtures with their classes renamed to ``LABELS``: overrides reading them."""
    paths = []
    for name, sep in (("reviews_train.csv", ","), ("reviews_val.tsv", "\t")):
        lines = (DATA / name).read_text().splitlines()
        rows = [lines[0]]
        for line in lines[1:]:
            text, label = line.rsplit(sep, 1)
            rows.append(f"{text}{sep}{LABELS[label]}")
        (folder / name).write_text("\n".join(rows) + "\n")
        paths.append(str(folder / name))
    return ["data=local", "data.format=text_label", f"data.train_path={paths[0]}",
            f"data.val_path={paths[1]}"]  # fmt: skip


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A tiny classifier trained by ``ftlight-train`` on classes named like interpolations:
    its run folder, and the data overrides."""
    root = tmp_path_factory.mktemp("trust")
    data = _data(root)
    args = ["model=tiny-bert", "task=classification", *data, *QUICK, f"hydra.run.dir={root}/run"]
    proc = _cli("ftlight", *args, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run", data


def test_class_names_from_data_stay_text_through_training_and_eval(classifier) -> None:
    """The export records the data's class names as they are, and ``ftlight-eval`` matches
    them to the data's labels as text (resolved, they would match nothing)."""
    run, data = classifier
    config = json.loads((run / "model" / "config.json").read_text())
    assert sorted(config["id2label"].values()) == sorted(LABELS.values())
    out = run.parent / "metrics.json"
    proc = _cli("ftlight.cli.eval", str(run), *data, *BASE, "--json", str(out), cwd=run.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = json.loads((run / "metrics.json").read_text())["after"]
    assert json.loads(out.read_text())["accuracy"] == pytest.approx(after["accuracy"])


@pytest.mark.parametrize("name", ["torch.load", "builtins.open", "shutil.copyfile"])
def test_eval_refuses_a_label_that_is_config(classifier, tmp_path, name) -> None:
    """A model folder whose ``config.json`` label is a ``_target_`` mapping: refused, naming
    the file and key; nothing runs."""
    run, data = classifier
    folder = tmp_path / "model"
    shutil.copytree(run / "model", folder)
    marker = tmp_path / "payload-ran"
    payload = _payloads(folder, marker)[name]
    config = json.loads((folder / "config.json").read_text())
    config["id2label"]["1"] = payload
    (folder / "config.json").write_text(json.dumps(config))

    proc = _cli("ftlight.cli.eval", str(folder), *data, *BASE, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    expected = f'{folder}/config.json: id2label["1"] is a dict, expected a class name (text)'
    assert expected in proc.stderr
    assert not marker.exists()
    _assert_live(payload, folder, marker)


@pytest.mark.parametrize(
    "task",
    [{"_target_": "builtins.open", "file": "MARKER", "mode": "w"}, "${oc.env:FTLIGHT_TRUST_VALUE}",
     "classification,causal_lm", "classification +trainer.max_steps=${oc.env:HOME}"],
)  # fmt: skip
def test_eval_refuses_a_task_that_is_not_a_task_name(classifier, tmp_path, task) -> None:
    """``ftlight.json``'s task becomes a ``task=<name>`` override only when it names a task."""
    run, data = classifier
    folder = tmp_path / "model"
    shutil.copytree(run / "model", folder)
    marker = tmp_path / "payload-ran"
    if isinstance(task, dict):
        task = {**task, "file": str(marker)}
    meta = json.loads((folder / "ftlight.json").read_text())
    (folder / "ftlight.json").write_text(json.dumps({**meta, "task": task}))

    proc = _cli("ftlight.cli.eval", str(folder), *data, *BASE, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    expected = f'{folder}/ftlight.json: "task" is {task!r}, expected one of causal_lm, classifi'
    assert expected in proc.stderr
    assert not marker.exists()


def test_eval_takes_the_users_task_over_the_files(classifier, tmp_path) -> None:
    """The user's own ``task=`` wins over ``ftlight.json``'s, which is then not read as an
    override at all."""
    run, data = classifier
    folder = tmp_path / "model"
    shutil.copytree(run / "model", folder)
    meta = json.loads((folder / "ftlight.json").read_text())
    (folder / "ftlight.json").write_text(json.dumps({**meta, "task": "${oc.env:HOME}"}))
    args = [str(folder), *data, *BASE, "task=classification"]
    proc = _cli("ftlight.cli.eval", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "accuracy" in proc.stdout


def test_eval_refuses_a_model_folder_named_like_an_interpolation(classifier, tmp_path) -> None:
    """A path is text, but Hydra's ``instantiate`` resolves even an escaped ``${`` again: such
    a folder is refused with the fix, before anything resolves it."""
    run, data = classifier
    folder = tmp_path / "${oc.env:FTLIGHT_TRUST_VALUE}"
    shutil.copytree(run / "model", folder)
    proc = _cli("ftlight.cli.eval", str(folder), *data, *BASE, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"the model folder's path {folder} holds '${{'" in proc.stderr
    assert ENV_VALUE not in proc.stderr


def _planted_run(folder: Path, marker: Path, value: str) -> None:
    """A finished run folder whose Hydra files hold payloads and interpolations."""
    hydra = folder / ".hydra"
    hydra.mkdir(parents=True)
    payloads = _payloads(folder, marker)
    config = {
        "model": {"name_or_path": str(folder)},
        "strategy": {"_target_": "plugins.lora.LoRAStrategy", "r": 8},
        "notes": {**payloads, "home": value},
    }
    (hydra / "config.yaml").write_text(yaml.safe_dump(config))
    (hydra / "overrides.yaml").write_text(yaml.safe_dump(["strategy=lora", f"+notes.home={value}"]))
    choices = {"hydra": {"runtime": {"choices": {"strategy": "lora", "task": "classification"}}}}
    (hydra / "hydra.yaml").write_text(yaml.safe_dump(choices))
    metrics = {
        "strategy": "lora",
        "task": "classification",
        "params": {"trainable": 10, "total": 100},
        "before": {"accuracy": 0.5},
        "after": {"accuracy": 0.75},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_compare_reads_run_folders_as_text(tmp_path) -> None:
    """``ftlight-compare`` shows a run's settings as written: nothing is resolved or built."""
    marker = tmp_path / "payload-ran"
    _planted_run(tmp_path / "sweep" / "0", marker, "${oc.env:FTLIGHT_TRUST_VALUE}")
    _planted_run(tmp_path / "sweep" / "1", marker, "plain")
    proc = _cli("ftlight.cli.compare", str(tmp_path / "sweep"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not marker.exists()
    for written in (proc.stdout, (tmp_path / "sweep" / "compare.csv").read_text()):
        assert "${oc.env:FTLIGHT_TRUST_VALUE}" in written  # the differing setting, as text
        assert ENV_VALUE not in written
    config = yaml.safe_load((tmp_path / "sweep" / "0" / ".hydra" / "config.yaml").read_text())
    _assert_live(config["notes"]["builtins.open"], tmp_path, marker)


def test_a_checkpoint_named_like_an_interpolation_is_resumed_by_its_name(helpers, tmp_path):
    """``ckpt_path=auto`` puts the found file's name into the config as text."""
    from ftlight.resume import resolve_ckpt_path

    ckpt = tmp_path / "checkpoints" / "step-${oc.env:HOME}.ckpt"
    ckpt.parent.mkdir()
    torch.save({"global_step": 3, "state_dict": {}}, ckpt)
    cfg = resolve_ckpt_path(helpers.compose(["ckpt_path=auto"], tmp_path, "classification"))
    assert cfg.ckpt_path == str(ckpt)
