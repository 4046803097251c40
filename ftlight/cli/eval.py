"""``ftlight-eval``: score any model on any data with the metrics ftlight-train reports."""

from __future__ import annotations

import argparse
import json
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from ftlight.build import build_run
from ftlight.config import CONF_DIR, literal, register
from ftlight.errors import ConfigError, FtlightError, ModelError
from ftlight.export import find_model_dir
from ftlight.validate import looks_like_path

log = logging.getLogger("ftlight")


def evaluate_model(
    model: str, overrides: list[str], split: str = "validation", predictions: Path | None = None
) -> dict[str, float]:
    """Metrics of ``model`` (a run folder, model folder or Hub id) on the configured data;
    ``predictions``: a folder for each row's prompt, answer and scores (``<split>.jsonl``).

    What the model folder's files say (its task, its class names) is checked and passed on as
    plain values: nothing read from a file becomes config that ``instantiate`` would build.
    """
    register()
    model_ref = model
    meta: dict = {}
    config: dict = {}
    model_dir: Path | None = None
    if Path(model).expanduser().exists():
        model_dir = find_model_dir(model)
        model_ref = str(model_dir.resolve())
        if (model_dir / "ftlight.json").exists():
            meta = _read_object(model_dir / "ftlight.json")
        config = _read_object(model_dir / "config.json")
    elif looks_like_path(model):  # not a Hub id: say so without asking the Hub
        raise ModelError(
            f"ftlight-eval {model}: no such folder (looked in {Path(model).expanduser().resolve()})"
            "; give a run folder, a model folder or a Hub id (org/name)"
        )
    if "${" in model_ref:  # Hydra's instantiate resolves even an escaped "${" a second time
        raise ModelError(
            f"ftlight-eval {model}: the model folder's path {model_ref} holds '${{', which the "
            "config would read as an interpolation; rename the folder (or link it) under a "
            "plain name"
        )
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    defaults = ["model=hf", f"model.name_or_path={_quoted(literal(model_ref))}", "strategy=full"]
    defaults += ["logger=none", f"eval.split={split}"]
    with tempfile.TemporaryDirectory(prefix="ftlight-eval-") as tmp:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            if "task" not in given and meta.get("task") is not None:
                defaults.append(f"task={_known_task(meta['task'], model_dir / 'ftlight.json')}")
            run_dir = f"run_dir={_quoted(literal(tmp))}"
            cfg = compose("config", overrides=[*defaults, *overrides, run_dir])
        names = None
        if config.get("id2label") and cfg.task._target_.endswith("ClassificationTask"):
            names = _label_names(config["id2label"], model_dir / "config.json")
        with open_dict(cfg):
            cfg.callbacks.checkpoint = None
            cfg.trainer.enable_checkpointing = False
            if cfg.data.get("train_path", "x") in (None, "???") or OmegaConf.is_missing(
                cfg.data, "train_path"
            ):
                # evaluation reads no training rows; labels come from the model
                cfg.data.train_path = cfg.data.get("val_path") or cfg.data.get("test_path")
        run = build_run(cfg, label_names=names)
        run.module.configure_model()
        return run.evaluate(split, phase=split if predictions else None, folder=predictions)


def evaluate_gguf(
    path: Path, run: Path | None, overrides: list[str]
) -> tuple[str, dict[str, dict[str, Any]]]:
    """A GGUF file (or each GGUF of an export folder) scored through ``llama-server`` on its
    run's evaluation prompts: the table beside the run's ``after`` column, and the scores."""
    from ftlight.serve import parity

    files = sorted(path.glob("*.gguf")) if path.is_dir() else [path]
    files = [f for f in files if not f.name.startswith("adapter-")]
    if not files:
        raise ModelError(f"{path} holds no .gguf file; export one with ftlight-export --to gguf")
    if overrides:
        raise ConfigError(
            f"ftlight-eval {path}: a GGUF is scored on the prompts of its run's evaluation "
            f"(predictions/after.jsonl), so {' '.join(overrides)} would change nothing; drop "
            "the overrides, or score the merged model (the run folder) on other data"
        )
    run = run or _run_of(files[0])
    scores = {f.stem.removeprefix("model-"): parity.score_gguf(f, run) for f in files}
    return parity.table(parity.after_metrics(run), scores), scores


def _run_of(gguf: Path) -> Path:
    """The run folder of ``<run>/export/<format>/<file>.gguf``."""
    run = gguf.resolve().parent.parent.parent
    if gguf.resolve().parent.parent.name != "export" or not (run / "predictions").is_dir():
        raise ModelError(
            f"{gguf} is not inside a run folder's export/<format>/: pass the run it came from "
            "with --run <run folder>"
        )
    return run


def _is_gguf(model: str) -> bool:
    path = Path(model).expanduser()
    return path.suffix == ".gguf" or (path.is_dir() and any(path.glob("*.gguf")))


def _read_object(path: Path) -> dict[str, Any]:
    """A model folder's JSON file, which must hold an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"{path} is not readable JSON ({err}); re-export the model") from None
    if not isinstance(value, dict):
        raise ModelError(
            f"{path} holds a {type(value).__name__}, expected a JSON object; re-export the model"
        )
    return value


def _known_task(task: Any, path: Path) -> str:
    """``task`` from ``ftlight.json`` when it names a task config, else refused: a value from
    a file must not become an override (another key, a sweep, an interpolation)."""
    known = sorted(GlobalHydra.instance().config_loader().get_group_options("task"))
    if isinstance(task, str) and task in known:
        return task
    raise ModelError(
        f'{path}: "task" is {task!r}, expected one of {", ".join(known)}. Fix that file, or '
        "pass task=<name> to ftlight-eval"
    )


def _label_names(id2label: Any, path: Path) -> list[str]:
    """The class names of a model folder's ``config.json``, in id order; each must be text."""
    if not isinstance(id2label, dict):
        raise ModelError(
            f'{path}: "id2label" is a {type(id2label).__name__}, expected an object of class '
            'ids to class names, e.g. {"0": "negative", "1": "positive"}; fix that file'
        )
    names = []
    for i in range(len(id2label)):
        name = id2label.get(str(i))
        if not isinstance(name, str):
            what = "missing" if name is None else f"a {type(name).__name__}"
            raise ModelError(
                f'{path}: id2label["{i}"] is {what}, expected a class name (text), e.g. '
                '{"0": "negative", "1": "positive"}; fix that file'
            )
        names.append(name)
    return names


def _quoted(value: str) -> str:
    """``value`` as a quoted Hydra override value: commas, spaces and brackets stay literal."""
    escaped = re.sub(r"(\\+)(?='|$)", r"\1\1", value)  # backslashes before a quote double
    return "'" + escaped.replace("'", "\\'") + "'"


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    parser = argparse.ArgumentParser(
        prog="ftlight-eval",
        description="Evaluate a model with ftlight's metrics. Overrides are Hydra-style, as for "
        "ftlight-train: e.g. data=local data.val_path=val.jsonl data.format=alpaca",
    )
    parser.add_argument(
        "model",
        help="run folder, exported model folder, Hub id, or a GGUF file (or export folder) "
        "to score through llama-server on its run's evaluation prompts",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides (data=..., task=...)")
    parser.add_argument("--split", default="validation", choices=["validation", "test"])
    parser.add_argument("--json", dest="json_out", default=None, help="also write metrics here")
    parser.add_argument(
        "--predictions",
        type=Path,
        default=None,
        help="folder for <split>.jsonl: each row's prompt, answer and scores (default: "
        "predictions/ beside --json)",
    )
    parser.add_argument(
        "--run",
        type=Path,
        default=None,
        help="the run a GGUF came from (default: the run folder the file's export folder is in)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    if _is_gguf(args.model):
        try:
            text, scores = evaluate_gguf(Path(args.model).expanduser(), args.run, args.overrides)
        except FtlightError as err:
            parser.exit(2, f"ftlight-eval: {err}\n")
        print(text)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(scores, indent=2) + "\n")
        return
    try:
        rows = args.predictions
        if rows is None and args.json_out:
            rows = Path(args.json_out).parent / "predictions"
        metrics = evaluate_model(args.model, args.overrides, args.split, rows)
    except FtlightError as err:
        parser.exit(2, f"ftlight-eval: {err}\n")
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        print(f"{key:<{width}}  {value:.4f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(metrics, indent=2) + "\n")


if __name__ == "__main__":
    from ftlight.speed.allocator import use_fast_allocator

    use_fast_allocator()
    main()
