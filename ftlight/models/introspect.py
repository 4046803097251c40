"""Find the parts of a Hugging Face model generically: the body, its repeated blocks, the head."""

from __future__ import annotations

from torch import nn


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The longest ``ModuleList`` of same-class modules (the transformer blocks), with its path."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        if best is None or len(module) > len(best[1]):
            best = (name, module)
    return best


def body_of(model: nn.Module) -> nn.Module | None:
    """The pretrained body (``model.base_model_prefix`` attribute), if the model has one."""
    prefix = getattr(model, "base_model_prefix", "")
    body = getattr(model, prefix, None) if prefix else None
    return body if isinstance(body, nn.Module) and body is not model else None


def head_module_names(model: nn.Module) -> list[str]:
    """Top-level child modules outside the body: the task head (``lm_head``, ``classifier``...)."""
    body = body_of(model)
    if body is None:
        return []
    return [name for name, child in model.named_children() if child is not body]


def output_embedding_is_tied(model: nn.Module) -> bool:
    """True when the LM head shares its weight with the input embedding."""
    get_out = getattr(model, "get_output_embeddings", None)
    get_in = getattr(model, "get_input_embeddings", None)
    if get_out is None or get_in is None:
        return False
    out, inp = get_out(), get_in()
    return out is not None and inp is not None and out.weight is inp.weight
