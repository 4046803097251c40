"""Strategy contract and registry; concrete strategies live in plugins."""

from ftlight.strategies.base import Strategy
from ftlight.strategies.registry import get_strategy_class

__all__ = ["Strategy", "get_strategy_class"]
