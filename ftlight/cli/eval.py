"""``ftlight-eval``: score any model on any data with the metrics ftlight-train reports."""

from __future__ import annotations

import argparse
import json
import logging
import re
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from ftlight.build import build_run
from ftlight.config import CONF_DIR, register
from ftlight.errors import FtlightError, ModelError
from ftlight.export import find_model_dir
from ftlight.validate import looks_like_path

log = logging.getLogger("ftlight")


def evaluate_model(model: str, overrides: list[str], split: str = "validation") -> dict[str, float]:
    """Metrics of ``model`` (a run folder, model folder or Hub id) on the configured data."""
    register()
    model_ref = model
    meta: dict = {}
    config: dict = {}
    if Path(model).expanduser().exists():
        model_dir = find_model_dir(model)
        model_ref = str(model_dir.resolve())
        if (model_dir / "ftlight.json").exists():
            meta = json.loads((model_dir / "ftlight.json").read_text())
        config = json.loads((model_dir / "config.json").read_text())
    elif looks_like_path(model):  # not a Hub id: say so without asking the Hub
        raise ModelError(
            f"ftlight-eval {model}: no such folder (looked in {Path(model).expanduser().resolve()})"
            "; give a run folder, a model folder or a Hub id (org/name)"
        )
    given = {o.split("=", 1)[0] for o in overrides}
    defaults = ["model=hf", f"model.name_or_path={_quoted(model_ref)}", "strategy=full"]
    defaults += ["logger=none", f"eval.split={split}"]
    if "task" not in given and meta.get("task"):
        defaults.append(f"task={meta['task']}")
    with tempfile.TemporaryDirectory(prefix="ftlight-eval-") as tmp:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=[*defaults, *overrides, f"run_dir={_quoted(tmp)}"])
        with open_dict(cfg):
            cfg.callbacks.checkpoint = None
            cfg.trainer.enable_checkpointing = False
            if config.get("id2label") and cfg.task._target_.endswith("ClassificationTask"):
                names = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
                cfg.data.label_names = names
            if cfg.data.get("train_path", "x") in (None, "???") or OmegaConf.is_missing(
                cfg.data, "train_path"
            ):
                # evaluation reads no training rows; labels come from the model
                cfg.data.train_path = cfg.data.get("val_path") or cfg.data.get("test_path")
        run = build_run(cfg)
        run.module.configure_model()
        return run.evaluate(split)


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
    parser.add_argument("model", help="run folder, exported model folder, or Hub id")
    parser.add_argument("overrides", nargs="*", help="config overrides (data=..., task=...)")
    parser.add_argument("--split", default="validation", choices=["validation", "test"])
    parser.add_argument("--json", dest="json_out", default=None, help="also write metrics here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    try:
        metrics = evaluate_model(args.model, args.overrides, args.split)
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
