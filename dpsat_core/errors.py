"""Exception types that the CLI and the dashboard turn into one clear line."""


class DpsatError(ValueError):
    """Base class for errors caused by the user's input (config, data, store)."""


class ConfigError(DpsatError):
    """A training or analysis setting is invalid; the message names field, value and fix."""


class DataError(DpsatError):
    """A data set cannot be loaded or used; the message says what is wrong and where."""


class StoreError(DpsatError):
    """A run or analysis asked of the store does not exist or cannot be read."""
