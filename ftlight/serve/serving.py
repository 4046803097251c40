"""The README of an export folder: how to serve what is in it, and what it scored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftlight.serve import parity


def _scores(plan: Any) -> list[str]:
    """The parity section: the table, or why there is none."""
    lines = ["## Scored through llama.cpp", ""]
    if plan.check:
        return [*lines, f"Not measured ({plan.check}).", ""]
    after = parity.after_metrics(plan.run_dir)
    rows = next(iter(plan.scores.values()))["rows"]
    lines += [
        f"`llama-server`, greedy, on the {rows} prompts of the run's evaluation after training",
        "(`predictions/after.jsonl`), scored with the run's metrics:",
        "",
        "```",
        parity.table(after, plan.scores),
        "```",
        "",
    ]
    return lines


def gguf_readme(files: dict[str, Path], lora: Path | None, plan: Any) -> str:
    """How to serve the GGUF files with llama.cpp (and the adapter GGUF, for a LoRA run)."""
    first = next(iter(files.values())).name
    lines = [
        "## Serving the GGUF",
        "",
        "Files: " + ", ".join(f"`{p.name}`" for p in files.values()) + ".",
        "The chat template, BOS/EOS and end tokens the run trained with are in each file.",
        "",
        "```bash",
        f"llama-server -m {first} --port 8080       # OpenAI-style API on localhost:8080",
        f"llama-cli -m {first} -cnv                 # chat in the terminal",
        "```",
        "",
    ]
    if lora is not None:
        lines += [
            f"`{lora.name}` is the LoRA adapter alone, for the *base* model's GGUF (convert the",
            "base with llama.cpp's `convert_hf_to_gguf.py`):",
            "`llama-server -m base-f16.gguf --lora " + lora.name + "`.",
            "",
        ]
    return "\n".join(lines + _scores(plan))


def ollama_readme(name: str, command: str, plan: Any) -> str:
    """How to import the folder into Ollama."""
    lines = [
        "## Serving with Ollama",
        "",
        "The `Modelfile` imports the GGUF beside it with the run's chat template (translated",
        "to Ollama's template language), one `PARAMETER stop` per end token and greedy",
        "decoding:",
        "",
        "```bash",
        command,
        f"ollama run {name}",
        "```",
        "",
    ]
    return "\n".join(lines + _scores(plan))


def adapter_readme(meta: dict[str, Any], config: dict[str, Any]) -> str:
    """How to serve the adapter with vLLM and TGI."""
    base = meta.get("base_model") or config.get("base_model_name_or_path")
    targets = config.get("target_modules")
    targets = ", ".join(sorted(targets)) if isinstance(targets, list) else targets
    return "\n".join(
        [
            "## Serving the adapter",
            "",
            f"A peft LoRA adapter (rank {config.get('r')}, on {targets}) for `{base}`:",
            "",
            "```bash",
            f"vllm serve {base} --enable-lora --lora-modules ftlight=$PWD "
            f"--max-lora-rank {config.get('r')}",
            f"docker run --gpus all -v $PWD:/adapter ghcr.io/huggingface/text-generation-inference "
            f"--model-id {base} --lora-adapters ftlight=/adapter",
            "```",
            "",
        ]
    )
