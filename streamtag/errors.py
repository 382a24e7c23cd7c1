"""Typed errors: each says what was wrong in one line.

Every error streamtag raises on bad input derives from :class:`StreamtagError`,
so the command line can print it as one line and exit with the usage code 2
instead of a traceback. Each also derives from the builtin a caller would expect
(``FileNotFoundError``, ``ValueError``), so library users can catch either.
"""


class StreamtagError(Exception):
    """Base class of every error caused by the user's input."""


class SpecError(StreamtagError, ValueError):
    """A FeatureSpec with invalid or unsupported values."""


class AudioError(StreamtagError, ValueError):
    """Audio that cannot be used."""


class AudioNotFoundError(AudioError, FileNotFoundError):
    """The audio file does not exist."""


class NotAudioError(AudioError):
    """The file exists but is not audio that libsndfile can decode."""


class EmptyAudioError(AudioError):
    """The audio holds no samples."""


class TruncatedAudioError(AudioError):
    """The file ends before the length its header announces."""


class NonFiniteAudioError(AudioError):
    """The audio holds NaN or infinite samples."""

    def __init__(self, message: str, position: int):
        super().__init__(message)
        self.position = position


class ModelError(StreamtagError, ValueError):
    """Invalid network settings, or input a network cannot take."""


class ModelFileError(ModelError):
    """A model file that is missing, truncated, foreign or of the wrong schema."""


class ModelNotFoundError(ModelFileError, FileNotFoundError):
    """The model file does not exist."""


class DatasetError(StreamtagError, ValueError):
    """A dataset folder whose layout or metadata cannot be used."""


class UnsupportedAudioError(AudioError):
    """Audio in an encoding or sample type streamtag does not decode."""


class DeviceError(StreamtagError, ValueError):
    """A sound device that cannot be found or opened, or no audio backend at all."""
