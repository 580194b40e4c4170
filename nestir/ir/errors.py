"""Errors raised by nestir: every one names what went wrong and where."""

from __future__ import annotations


class NestirError(Exception):
    """Base class of every error nestir raises on purpose."""


class TraceError(NestirError):
    """A model could not be traced into the IR."""


class ShapeError(NestirError):
    """Example inputs do not fit the model."""


class VerifyError(NestirError):
    """The IR broke an invariant; the message names the node."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"node '{node}': {message}")
        self.node = node


class EditError(NestirError):
    """An edit was refused; the graph is unchanged."""


class LoweringError(NestirError):
    """A node could not be lowered to torch or ONNX."""


class PassError(NestirError):
    """A pass was misconfigured or could not run."""


class DataError(NestirError):
    """A data set could not be loaded or is malformed."""


class ModelFileError(NestirError):
    """A saved model or checkpoint is missing, corrupt or tampered with."""


class ArgumentError(NestirError):
    """A public function was given an argument of the wrong kind or value (the message says which)."""


class OutputError(NestirError):
    """A file could not be written: an unwritable path, a directory in the way, no space left. The
    file that was there before is untouched."""


class PassContractError(NestirError, AssertionError):
    """A pass broke its declared contract (its effect, function preservation, data needs, or left
    a graph that does not verify); the message names the pass and the passes before it in the
    pipeline. Also an ``AssertionError``, so test runners report it as a failure."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
