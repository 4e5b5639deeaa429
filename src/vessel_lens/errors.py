"""Errors that reach the user as one line.

Every problem caused by user input (a file, an option, a checkpoint) raises a subclass of
:class:`VesselLensError` whose message names the thing and the problem. The CLI prints it as
``error: <message>`` and exits non-zero; library callers can catch it.
"""

from __future__ import annotations


class VesselLensError(Exception):
    """A problem with user input, reported to the user as one line."""

    exit_code = 2


class DataError(VesselLensError):
    """A dataset, image, label or manifest cannot be used."""


class CheckpointError(VesselLensError):
    """A checkpoint file is missing, corrupt or of another kind."""


class ModelError(VesselLensError):
    """A model from outside vessel-lens cannot run on the input it was given, or does not
    return the (B, K, H, W) class logits every command needs."""


class ConfigError(VesselLensError):
    """An option or configuration value is invalid."""


class TrainingError(VesselLensError):
    """Training cannot go on (for example, the loss became NaN)."""

    exit_code = 1


class OutputError(ConfigError):
    """An output folder cannot be used: it holds what the command would replace, files the
    command did not write, or another process is writing into it."""


class WriteError(VesselLensError):
    """Writing an output failed (permission denied, no space left, read-only file system)."""

    exit_code = 1
