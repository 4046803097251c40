"""The ``qlora`` strategy: LoRA adapters over a base model quantised to 4-bit NF4."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from peft import PeftModel
from torch import nn

from ftlight.errors import ConfigError
from ftlight.models.sources import parse_dtype
from ftlight.tasks import Task
from ftlight_lora import LoRAStrategy

log = logging.getLogger("ftlight.strategies.qlora")


def _require_bitsandbytes() -> Any:
    try:
        import bitsandbytes
    except ImportError as err:
        raise ConfigError(
            "strategy=qlora needs bitsandbytes: pip install bitsandbytes "
            "(or pick strategy=lora, which needs no quantisation)"
        ) from err
    return bitsandbytes


def local_rank() -> int:
    """This process's GPU on its node: ``LOCAL_RANK`` (Lightning's launcher, torchrun), else
    ``SLURM_LOCALID`` (a task srun started), else 0."""
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 0


class QLoRAStrategy(LoRAStrategy):
    """LoRA over a frozen 4-bit base (NF4, double quantisation; compute dtype configurable)."""

    name: ClassVar[str] = "qlora"

    def __init__(
        self,
        compute_dtype: str = "bfloat16",
        quant_type: str = "nf4",
        double_quant: bool = True,
        **lora_kwargs: Any,
    ) -> None:
        super().__init__(**lora_kwargs)
        if quant_type not in ("nf4", "fp4"):
            raise ConfigError(f"strategy.quant_type={quant_type!r} is not nf4 or fp4")
        self.compute_dtype = parse_dtype(compute_dtype)
        self.quant_type = quant_type
        self.double_quant = double_quant

    def validate(self, trainer_cfg: Mapping[str, Any], task: Task) -> None:
        """bitsandbytes must import; FSDP cannot shard 4-bit weights here."""
        _require_bitsandbytes()
        # a name ("fsdp") or a node ({_target_: ...ModelParallelStrategy}): match both spellings
        strategy = str(trainer_cfg.get("strategy", "")).lower().replace("_", "")
        if "fsdp" in strategy or "modelparallel" in strategy:
            raise ConfigError(
                "strategy=qlora cannot be combined with FSDP sharding (trainer=fsdp); use "
                "trainer=ddp, or strategy=lora with trainer=fsdp"
            )

    def check_model(self, model: nn.Module, task: Task) -> None:
        """A model with no layer that bitsandbytes quantises is refused: QLoRA would be LoRA
        over an unquantised model (``model`` is the skeleton, before the weights load)."""
        super().check_model(model, task)
        from transformers.pytorch_utils import Conv1D

        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        keep = [*task.full_precision_modules(), *task.new_module_names(model)]
        kinds: set[str] = set()
        for name, module in model.named_modules():
            if not isinstance(module, nn.Linear | Conv1D) or module is head:
                continue
            if any(name == k or name.startswith(f"{k}.") or name.endswith(k) for k in keep):
                continue
            # transformers swaps exactly these for 4-bit layers, no subclass of nn.Linear
            if isinstance(module, Conv1D) or type(module) is nn.Linear:
                return
            kinds.add(type(module).__name__)
        found = f"its linear layers are {', '.join(sorted(kinds))}" if kinds else "it has none"
        raise ConfigError(
            f"strategy=qlora quantises a model's nn.Linear layers to 4-bit, but "
            f"{type(model).__name__} has no layer bitsandbytes can quantise ({found}, which "
            "transformers' 4-bit loading leaves as they are), so it would train LoRA over an "
            "unquantised model. Use strategy=lora for this model"
        )

    def load_kwargs(self, task: Task) -> dict[str, Any]:
        """A 4-bit ``BitsAndBytesConfig`` and a device map for this process."""
        _require_bitsandbytes()
        from transformers import BitsAndBytesConfig

        skip = task.full_precision_modules() or None
        if torch.cuda.is_available():
            device_map: Any = {"": local_rank()}
        else:
            device_map = "cpu"
        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=self.quant_type,
                bnb_4bit_compute_dtype=self.compute_dtype,
                bnb_4bit_use_double_quant=self.double_quant,
                llm_int8_skip_modules=skip,
            ),
            "device_map": device_map,
        }

    def apply(self, model: nn.Module, task: Task) -> nn.Module:
        """Prepare the 4-bit model for training, then add the adapters."""
        if isinstance(model, PeftModel):
            return model
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        # a fresh head (ModernBERT's ``head`` before its classifier) trains in full precision:
        # peft's trainable copy of a 4-bit layer fails in bitsandbytes
        _dequantize_linear4bit(model, plain=tuple(task.new_module_names(model)))
        self.prepare_for_eval(model)
        return super().apply(model, task)

    def prepare_for_eval(self, model: nn.Module) -> None:
        """Keep 4-bit layers out of bitsandbytes' CPU inference repacking.

        On CPU, an eval-mode forward repacks 4-bit weights into an inference layout through
        which later training forwards lose gradients; turning the fast path off keeps one
        layout for training and evaluation.
        """
        bnb = _require_bitsandbytes()
        _plain_unfilled(model)
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = False

    def merged_model(self, model: nn.Module) -> nn.Module:
        """Dequantise the base layers exactly, then fold the adapters in: a plain model."""
        if isinstance(model, PeftModel):
            _dequantize_linear4bit(model)
            model = model.merge_and_unload()
        _restore_conv1d(model)
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        for attr in ("is_quantized", "hf_quantizer", "is_loaded_in_4bit"):
            if hasattr(model, attr):
                try:
                    setattr(model, attr, None if attr == "hf_quantizer" else False)
                except AttributeError:
                    pass
        return model


def _dequantize_linear4bit(model: nn.Module, plain: tuple[str, ...] = ()) -> None:
    """Replace each LoRA layer over a 4-bit base by an ``nn.Linear`` with the merged weight;
    with ``plain`` (module names), only the 4-bit layers in those modules, by their own weight.

    The weight is the exact dequantised NF4 weight plus the adapters' delta, in float32, so the
    merged model computes what the trained model computed (up to the compute dtype).
    """
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit
    from peft.tuners.lora import LoraLayer

    for prefix, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{prefix}.{name}" if prefix else name
            if plain:
                inside = any(full == p or full.startswith(f"{p}.") for p in plain)
                base, child = (child, None) if inside else (None, None)
            elif isinstance(child, LoraLayer):
                base = child.get_base_layer()
            else:
                continue
            if not isinstance(base, bnb.nn.Linear4bit):
                continue
            state = getattr(base.weight, "quant_state", None)
            # a 4-bit layer the checkpoint did not fill (a fresh head) holds a plain weight
            weight = base.weight.data if state is None else dequantize_4bit(base.weight.data, state)
            weight = weight.float()
            for adapter in child.active_adapters if child is not None else []:
                if adapter in child.lora_A:
                    weight = weight + child.get_delta_weight(adapter).float()
            linear = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
            linear.weight = nn.Parameter(weight, requires_grad=False)
            if base.bias is not None:
                linear.bias = nn.Parameter(base.bias.detach().float(), requires_grad=False)
            setattr(parent, name, linear.to(weight.device))


def _plain_unfilled(model: nn.Module) -> None:
    """4-bit layers that no checkpoint filled (a fresh head loaded over a base folder: its
    weight was never quantised) become ``nn.Linear``: bitsandbytes cannot run them."""
    import bitsandbytes as bnb

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, bnb.nn.Linear4bit):
                continue
            weight = child.weight
            if getattr(weight, "quant_state", None) is not None or weight.dim() != 2:
                continue
            if weight.shape[1] != child.in_features:
                continue  # packed without its state: nothing to read back
            linear = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
            linear.weight = nn.Parameter(weight.data.float(), weight.requires_grad)
            if child.bias is not None:
                linear.bias = nn.Parameter(child.bias.data.float(), child.bias.requires_grad)
            setattr(parent, name, linear.to(weight.device))


def _restore_conv1d(model: nn.Module) -> None:
    """Layers the architecture defines as ``Conv1D`` (GPT-2, GPTBigCode...) go back to it.

    transformers loads them in 4 bits as ``nn.Linear``-shaped layers (weight ``[out, in]``);
    saved so, the export would not load into its own architecture, whose ``Conv1D`` keeps the
    weight as ``[in, out]``.
    """
    from transformers.pytorch_utils import Conv1D

    with torch.device("meta"):
        reference = type(model)._from_config(model.config)
    wanted = {n for n, m in reference.named_modules() if isinstance(m, Conv1D)}
    if not wanted:
        return
    for prefix, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{prefix}.{name}" if prefix else name
            if full not in wanted or type(child) is not nn.Linear:
                continue
            conv = Conv1D(child.out_features, child.in_features).to(child.weight.device)
            conv.weight = nn.Parameter(child.weight.data.t().contiguous(), requires_grad=False)
            if child.bias is not None:
                conv.bias = nn.Parameter(child.bias.data, requires_grad=False)
            else:
                conv.bias = nn.Parameter(torch.zeros(child.out_features), requires_grad=False)
            setattr(parent, name, conv)
