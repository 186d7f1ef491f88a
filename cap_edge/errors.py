"""Typed errors. Every message says what was expected and what was found."""


class CapEdgeError(Exception):
    """Base class for errors that the CLI reports as a clear message (no traceback)."""


class ConfigError(CapEdgeError, ValueError):
    """A configuration value (flag, profile key, sparsity, pattern) is invalid."""


class ModelLoadError(CapEdgeError):
    """A model could not be found, read or verified."""


class UnsupportedArchitectureError(CapEdgeError):
    """The model's architecture has no entry in the architecture table."""


class TaskError(CapEdgeError):
    """A task spec or task data is invalid (empty set, bad JSONL row, overlapping splits)."""


class ScoringIncomplete(CapEdgeError):
    """Scoring stopped at its time budget; the partial result is saved, never presented as complete."""

    def __init__(self, message: str, partial_path=None):
        super().__init__(message)
        self.partial_path = partial_path


class ExportError(CapEdgeError):
    """An exporter could not write an artifact."""


class ValidationError(CapEdgeError):
    """An artifact's outputs differ from PyTorch's beyond the tolerance for its format."""

    def __init__(self, artifact: str, metric: str, value: float, tolerance: float):
        super().__init__(
            f"{artifact}: {metric} = {value:.6g} exceeds tolerance {tolerance:.6g}"
        )
        self.artifact = artifact
        self.metric = metric
        self.value = value
        self.tolerance = tolerance


class MemoryBudgetError(CapEdgeError):
    """The model does not fit the device profile's memory budget."""


class RuntimeLoadError(CapEdgeError):
    """A runtime could not load or run an artifact."""


class MeasurementError(CapEdgeError):
    """Measuring an artifact's latency or memory failed."""


class ScoresError(CapEdgeError):
    """A head- or channel-score file or cache entry does not fit the model (or is damaged)."""


class PruneError(CapEdgeError):
    """Pruning produced something other than what was asked (e.g. the wrong sparsity); nothing is written."""
