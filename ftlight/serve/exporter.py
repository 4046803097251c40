"""``<run>/export/<format>/``: a run's model in the form a serving tool loads, measured.

Every format is planned (and refused) before any file is written, then written into a temp
folder that is renamed into place, so a failure at any step, the converter's included,
leaves no half-written export. GGUF files are scored through ``llama-server`` on the run's
evaluation prompts before the rename; the figures go into the folder's README and into
``<run>/metrics.json`` under ``export.<format>.<type>``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftlight.errors import ConfigError, ModelError
from ftlight.evaluation.report import write_metrics
from ftlight.files import atomic_dir
from ftlight.logs import timed
from ftlight.serve import llama_cpp, ollama, parity
from ftlight.serve.gguf import (
    check_convertible,
    check_types,
    read_json,
    run_tokens,
    write_adapter,
    write_model,
)
from ftlight.serve.serving import adapter_readme, gguf_readme, ollama_readme

log = logging.getLogger("ftlight")

FORMATS = ("gguf", "ollama", "merged", "adapter")
DEFAULT_TYPES = {"gguf": ["f16", "q8_0", "q4_k_m"], "ollama": ["q8_0"]}
#: the adapter files vLLM and TGI read (tokenizer files stay with the base model)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md")


@dataclass
class Plan:
    """What one export will write and check, settled before any work."""

    run_dir: Path
    fmt: str
    types: list[str] = field(default_factory=list)
    check: str | None = None  # why the parity check is skipped; None: it runs
    pieces: Any = None
    tokens: Any = None
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def target(self) -> Path:
        """The export folder."""
        return self.run_dir / "export" / self.fmt


def plan_export(
    run_dir: Path, fmt: str, types: list[str] | None = None, check: bool = True
) -> Plan:
    """Everything about an export that can be refused, refused now: the run folder, the
    format, the architecture, the types, the chat template."""
    run_dir = Path(run_dir).expanduser()
    model_dir = run_dir / "model"
    if fmt not in FORMATS:
        raise ConfigError(f"--to {fmt}: expected one of {', '.join(FORMATS)}")
    if not (model_dir / "config.json").is_file():
        raise ModelError(
            f"{run_dir} holds no model/ with a config.json: pass a run folder written by "
            "ftlight-train with eval.export=true"
        )
    plan = Plan(run_dir, fmt)
    if fmt == "adapter":
        if not (run_dir / "adapter" / "adapter_config.json").is_file():
            strategy = read_json(model_dir / "ftlight.json").get("strategy", "this strategy")
            raise ModelError(
                f"{run_dir} has no adapter/ (strategy {strategy} trains no adapter); "
                "export --to merged for the whole model"
            )
        return plan
    if fmt == "merged":
        return plan
    check_convertible(model_dir)
    plan.types = list(dict.fromkeys(types or _default_types(fmt)))
    if fmt == "ollama" and len(plan.types) != 1:
        raise ConfigError(
            f"--to ollama --type {' '.join(plan.types)}: an Ollama Modelfile imports one GGUF; "
            "give one --type"
        )
    check_types(plan.types)
    from transformers import AutoTokenizer

    plan.tokens = run_tokens(model_dir)
    if fmt == "ollama":
        plan.pieces = ollama.chat_pieces(AutoTokenizer.from_pretrained(model_dir))
    plan.check = _why_unchecked(run_dir, check)
    return plan


def _default_types(fmt: str) -> list[str]:
    """The default types; the 4-bit one only where ``llama-quantize`` is built."""
    types = DEFAULT_TYPES[fmt]
    if fmt == "gguf" and llama_cpp.program("llama-quantize") is None:
        log.warning("no q4_k_m GGUF: %s", llama_cpp.not_built("llama-quantize"))
        types = [t for t in types if t in llama_cpp.CONVERTER_TYPES]
    return types


def _why_unchecked(run_dir: Path, check: bool) -> str | None:
    if not check:
        return "skipped: --no-check"
    if llama_cpp.program("llama-server") is None:
        return f"skipped: {llama_cpp.not_built('llama-server')}"
    if not parity.has_evaluation(run_dir):
        return "skipped: the run has no generated evaluation (predictions/after.jsonl)"
    return None


def export(plan: Plan) -> Path:
    """Write the planned export folder in one piece; record the check in ``metrics.json``."""
    writers: dict[str, Callable[[Plan, Path], None]] = {
        "gguf": _write_gguf,
        "ollama": _write_ollama,
        "merged": _write_merged,
        "adapter": _write_adapter,
    }
    if plan.check:
        log.warning("export check %s", plan.check)
    with timed(f"export --to {plan.fmt}", log):
        atomic_dir(plan.target, lambda tmp: writers[plan.fmt](plan, tmp))
    if plan.types:
        _record(plan)
    return plan.target


def _write_gguf(plan: Plan, tmp: Path) -> None:
    files = write_model(plan.run_dir / "model", tmp, plan.types)
    adapter = plan.run_dir / "adapter"
    lora = None
    if (adapter / "adapter_config.json").is_file():
        lora = write_adapter(adapter, plan.run_dir / "model", tmp / "adapter-f16.gguf")
    _check(plan, files)
    card = _run_card(plan.run_dir)
    (tmp / "README.md").write_text(card + gguf_readme(files, lora, plan), encoding="utf-8")


def _write_ollama(plan: Plan, tmp: Path) -> None:
    files = write_model(plan.run_dir / "model", tmp, plan.types)
    (path,) = files.values()
    prompts = [row["prompt"] for row in _rows(plan.run_dir)]
    system = ollama.run_system(plan.pieces, prompts) if prompts else None
    text = ollama.modelfile(path.name, plan.pieces, plan.tokens.ends, system)
    (tmp / "Modelfile").write_text(text, encoding="utf-8")
    _check(plan, files)
    name = _ollama_name(plan.run_dir)
    command = ollama.create_command(name, plan.target.resolve())
    print(command)
    card = _run_card(plan.run_dir)
    (tmp / "README.md").write_text(card + ollama_readme(name, command, plan), encoding="utf-8")


def _write_merged(plan: Plan, tmp: Path) -> None:
    for path in sorted((plan.run_dir / "model").iterdir()):
        if path.is_file():
            shutil.copy2(path, tmp / path.name)


def _write_adapter(plan: Plan, tmp: Path) -> None:
    adapter = plan.run_dir / "adapter"
    config = read_json(adapter / "adapter_config.json")
    kept = config.get("modules_to_save") or []
    if kept:
        log.warning(
            "the adapter keeps whole modules (modules_to_save: %s): vLLM ignores them and "
            "serves those layers from the base model, so its answers differ from the run's; "
            "serve --to merged where they matter",
            ", ".join(kept),
        )
    for name in ADAPTER_FILES:
        if (adapter / name).is_file() and name != "README.md":
            shutil.copy2(adapter / name, tmp / name)
    config["target_modules"] = _layer_names(config.get("target_modules"), plan.run_dir / "model")
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    meta = read_json(plan.run_dir / "model" / "ftlight.json")
    card = _run_card(plan.run_dir)
    (tmp / "README.md").write_text(card + adapter_readme(meta, config), encoding="utf-8")


def _layer_names(targets: Any, model_dir: Path) -> Any:
    """peft's module paths (``model.layers.0.self_attn.q_proj``) as the base's layer names
    (``q_proj``), which servers match against their own layers; kept as paths when some
    layer of a name was left out (the names would then select more than was trained)."""
    if not isinstance(targets, list) or not all("." in t for t in targets):
        return targets
    from safetensors import safe_open

    modules: set[str] = set()
    for path in model_dir.glob("*.safetensors"):
        with safe_open(path, "pt") as f:
            modules.update(k.rsplit(".", 1)[0] for k in f.keys() if k.endswith(".weight"))
    names = {t.rsplit(".", 1)[-1] for t in targets}
    every = {m for m in modules if m.rsplit(".", 1)[-1] in names}
    if every != set(targets):
        log.warning("the adapter covers some layers of a name only: target_modules kept as paths")
        return targets
    return sorted(names)


def _check(plan: Plan, files: dict[str, Path]) -> None:
    """Score each GGUF through llama-server before the folder is renamed into place."""
    if plan.check:
        return
    for kind, path in files.items():
        with timed(f"score {path.name} through llama-server", log):
            plan.scores[kind] = parity.score_gguf(path, plan.run_dir)


def _record(plan: Plan) -> None:
    """``metrics.json``'s ``export.<format>``: the figures by type, or why they are missing."""
    path = plan.run_dir / "metrics.json"
    metrics = read_json(path)
    entry = dict(plan.scores) if not plan.check else {"check": plan.check}
    metrics.setdefault("export", {})[plan.fmt] = entry
    write_metrics(path, metrics)


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    try:
        return parity.run_rows(run_dir)
    except ModelError:
        return []


def _run_card(run_dir: Path) -> str:
    card = run_dir / "model" / "README.md"
    return card.read_text(encoding="utf-8").rstrip() + "\n\n" if card.is_file() else ""


def _ollama_name(run_dir: Path) -> str:
    """A model name Ollama takes, from the run folder's name."""
    name = re.sub(r"[^a-z0-9._-]+", "-", "-".join(run_dir.resolve().parts[-2:]).lower())
    return f"ftlight-{name.strip('-.') or 'model'}"


def summary(plan: Plan) -> str:
    """The lines ``ftlight-export`` prints at the end."""
    lines = [f"wrote {plan.target}"]
    if plan.scores:
        lines.append(parity.table(parity.after_metrics(plan.run_dir), plan.scores))
    elif plan.check:
        lines.append(f"check {plan.check}")
    return "\n".join(lines)
