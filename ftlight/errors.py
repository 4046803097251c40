"""Exceptions ftlight raises for problems a user can fix."""


class FtlightError(Exception):
    """A problem with the user's input: the message says what was wrong and how to fix it."""


class ConfigError(FtlightError, ValueError):
    """An invalid or inconsistent configuration value."""


class DataError(FtlightError, ValueError):
    """A data file that cannot be read or a row that does not fit the chosen format."""


class ModelError(FtlightError, RuntimeError):
    """A model that cannot be found, fetched or adapted."""


class StorageError(FtlightError, OSError):
    """A file the run must keep that could not be written (a full disk, a read-only folder)."""


class TrainingError(FtlightError, RuntimeError):
    """A run that trained but failed: a non-finite loss, or weights that never moved."""
