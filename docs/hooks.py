"""mkdocs hooks: the configuration reference is generated from ``conf/`` at every build."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

_GENERATOR = Path(__file__).with_name("gen_config_reference.py")


def _generator():
    spec = importlib.util.spec_from_file_location("gen_config_reference", _GENERATOR)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def on_files(files: Files, config) -> Files:
    """Add ``reference/configuration.md``, rendered from the YAML files as they are now."""
    gen = _generator()
    page = gen.render(gen.config_files())
    files.append(File.generated(config, "reference/configuration.md", content=page))
    return files
