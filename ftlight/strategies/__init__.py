"""Strategy contract and registry; concrete strategies live in plugins."""

from ftlight.strategies.base import Strategy
from ftlight.strategies.registry import available_strategies, get_strategy_class

__all__ = ["Strategy", "available_strategies", "get_strategy_class"]
