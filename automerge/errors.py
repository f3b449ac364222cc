"""User-facing errors. Every message names the problem (file, tensor, parameter, YAML path) and the fix.

The CLI prints these without a traceback and exits with status 2.
"""


class AutomergeError(Exception):
    """Base class of every error a user is meant to read and act on."""


class CheckpointError(AutomergeError):
    """A model directory cannot be read: missing, incomplete, corrupt, or holding NaN/Inf."""


class IncompatibleModelsError(AutomergeError):
    """Base and specialists cannot be merged: architecture, tensor names, shapes, vocab or tokenizer differ."""


class RecipeError(AutomergeError):
    """A merge recipe is invalid: unknown method, parameter out of range, missing model, ..."""


class SpaceError(AutomergeError):
    """A search-space file is invalid."""


class EvalError(AutomergeError):
    """An evaluation task cannot be set up or run."""
