"""ftlight: fine-tune pretrained transformers with Lightning, Hydra and pluggable strategies."""

__version__ = "0.1.0"
