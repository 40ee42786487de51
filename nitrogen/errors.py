"""Exceptions raised by nitrogen."""


class NitrogenError(Exception):
    """Base class for nitrogen errors."""


class CheckpointError(NitrogenError, ValueError):
    """A checkpoint file is malformed, foreign, or does not match its config."""


class UnknownVisionEncoderError(CheckpointError):
    """A checkpoint names a vision encoder that is neither registered nor cached locally."""
