"""``ftlight-generate``: answer prompts with an exported model, laid out as in training."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from ftlight.data.encode import encode_prompt
from ftlight.errors import FtlightError, ModelError
from ftlight.export import find_model_dir
from ftlight.speed.decode import fast_greedy
from ftlight.tasks.generation import GreedyAnswers
from ftlight.validate.positions import fit_new_tokens, model_limit

# class-name endings of transformers models that generate text
_GENERATORS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


class Generator:
    """Loads an exported causal LM and answers prompts greedily (or by sampling).

    A model folder's own Python code (``auto_map`` in its config) runs only with
    ``trust_remote_code=True``; otherwise such a folder is refused, never asked about.
    """

    def __init__(
        self, model_dir: str | Path, device: str | None = None, trust_remote_code: bool = False
    ) -> None:
        hf_logging.disable_progress_bar()
        self.model_dir = find_model_dir(model_dir)
        meta_path = self.model_dir / "ftlight.json"
        self.meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        config = json.loads((self.model_dir / "config.json").read_text())
        architectures = config.get("architectures") or []
        if architectures and not any(a.endswith(_GENERATORS) for a in architectures):
            raise ModelError(
                f"{self.model_dir} holds a {architectures[0]}, which does not generate text; "
                "ftlight-generate needs a causal LM (score classifiers with ftlight-eval)"
            )
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # always a bool: None would make transformers ask on stdin, where piped input answers
        trust = {"trust_remote_code": bool(trust_remote_code)}
        with _refusing_remote_code(self.model_dir):
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, **trust)
            model = AutoModelForCausalLM.from_pretrained(self.model_dir, **trust)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = model.to(self.device).eval()
        #: greedy answers as evaluation decodes them (the model's generation_config applied)
        self.greedy = GreedyAnswers()
        self.limit = model_limit(self.model)  # prompt + answer stay within its positions

    def with_instruction(self, text: str) -> str:
        """``text`` laid out as an alpaca input under the instruction the model was trained on.

        Runs whose training rows all shared one instruction (a task-specific fine-tune) record
        it in the export; other runs take the text as it is.
        """
        instruction = self.meta.get("instruction")
        return f"{instruction}\n\n{text}" if instruction else text

    @torch.no_grad()
    def answer(
        self,
        messages: list[dict[str, str]],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        raw: bool = False,
    ) -> str:
        """The model's reply to ``messages`` (ending with a user turn)."""
        ids = encode_prompt(messages, self.tokenizer, raw=raw)
        max_new_tokens = fit_new_tokens(len(ids), max_new_tokens, self.limit, "--max-new-tokens")
        input_ids = torch.tensor([ids], device=self.device)
        eos = {self.tokenizer.eos_token_id}
        gen_eos = self.model.generation_config.eos_token_id
        eos.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        ends = sorted(e for e in eos if e is not None)
        if temperature > 0:
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                eos_token_id=ends,
                pad_token_id=self.tokenizer.pad_token_id,
                do_sample=True,
                temperature=temperature,
            )
            new = out[0, len(ids) :]
        else:  # evaluation's decoder: the same answers as the run's scores
            mask = torch.ones_like(input_ids)
            pad = self.tokenizer.pad_token_id
            new = fast_greedy(self.greedy, self.model, input_ids, mask, max_new_tokens, ends, pad)
            new = new[0]
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()


@contextlib.contextmanager
def _refusing_remote_code(model_dir: Path) -> Iterator[None]:
    """Turn transformers' refusal to run a folder's code into a ``ModelError`` with the fix."""
    try:
        yield
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise ModelError(
            f"{model_dir} needs its own Python code to load (config.json names custom classes "
            "in auto_map), and ftlight-generate does not run code from a model folder unless "
            "told to. If you trust every .py file in that folder, pass --trust-remote-code; "
            "a model exported by ftlight-train never needs it."
        ) from None


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    parser = argparse.ArgumentParser(
        prog="ftlight-generate",
        description="Answer prompts with a model exported by ftlight-train.",
    )
    parser.add_argument("run", help="run folder (uses its model/ export) or a model folder")
    parser.add_argument("prompt", nargs="?", help="the prompt; '-' reads it from stdin")
    parser.add_argument("--chat", action="store_true", help="interactive multi-turn session")
    parser.add_argument("--system", default=None, help="system message to start with")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--raw", action="store_true", help="no chat template (prompt_completion)")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run Python code shipped in the model folder (auto_map); only for folders you trust",
    )
    parser.add_argument(
        "--no-instruction",
        action="store_true",
        help="send the prompt alone, without the instruction every training row shared",
    )
    args = parser.parse_args(argv)
    try:
        gen = Generator(args.run, trust_remote_code=args.trust_remote_code)
    except FtlightError as err:
        parser.exit(2, f"ftlight-generate: {err}\n")
    history: list[dict[str, str]] = (
        [{"role": "system", "content": args.system}] if args.system else []
    )
    opts = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "raw": args.raw}
    if not args.chat:
        if args.prompt is None:
            parser.error("give a prompt, '-' for stdin, or --chat")
        prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
        if not args.no_instruction:
            prompt = gen.with_instruction(prompt)
        try:
            print(gen.answer([*history, {"role": "user", "content": prompt}], **opts))
        except FtlightError as err:
            parser.exit(2, f"ftlight-generate: {err}\n")
        return
    print(f"chatting with {gen.model_dir} (empty line or Ctrl-D to quit)")
    if args.prompt:
        first = args.prompt if args.no_instruction else gen.with_instruction(args.prompt)
        history.append({"role": "user", "content": first})
        reply = gen.answer(history, **opts)
        print(f"assistant> {reply}")
        history.append({"role": "assistant", "content": reply})
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        history.append({"role": "user", "content": line})
        reply = gen.answer(history, **opts)
        print(f"assistant> {reply}")
        history.append({"role": "assistant", "content": reply})


if __name__ == "__main__":
    from ftlight.speed.allocator import use_fast_allocator

    use_fast_allocator()
    main()
