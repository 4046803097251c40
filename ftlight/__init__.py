"""ftlight: fine-tune pretrained transformers with Lightning, Hydra and pluggable strategies."""

import logging

__version__ = "0.1.0"

# bitsandbytes warns at import on CPUs with AVX512-BF16 that an optional Hub-hosted kernel is
# missing; its built-in kernels work, so the warning is noise for every ftlight command.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
