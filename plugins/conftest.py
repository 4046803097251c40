"""Shared set-up of the plugin tests: the core's test helpers, loaded once.

pytest applies ``tests/conftest.py`` only below ``tests/``; the plugins' tests reuse it through
this file, as ``import ftlight_core_test_helpers as core``.
"""

import importlib.util
import sys
from pathlib import Path

_NAME = "ftlight_core_test_helpers"
_spec = importlib.util.spec_from_file_location(
    _NAME, Path(__file__).resolve().parents[1] / "tests" / "conftest.py"
)
core = importlib.util.module_from_spec(_spec)
sys.modules[_NAME] = core
_spec.loader.exec_module(core)

ftlight_cache = core.ftlight_cache  # autouse: a session FTLIGHT_CACHE, single-threaded torch
