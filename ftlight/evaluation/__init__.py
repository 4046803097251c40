"""Evaluation: metrics, generation-based scoring and the before/after report."""
