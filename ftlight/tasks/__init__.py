"""Tasks: what the model learns and how it is scored."""

from ftlight.tasks.base import LabelInfo, Task
from ftlight.tasks.causal_lm import CausalLMTask
from ftlight.tasks.classification import ClassificationTask

__all__ = ["CausalLMTask", "ClassificationTask", "LabelInfo", "Task"]
