"""streamtag: a real-time sound event tagger (Piczak CNN on streaming log-mel features).

The Python API (:mod:`streamtag.tagger`)::

    import streamtag
    result = streamtag.Tagger().tag("street.flac")

Its names are imported on first use, so ``import streamtag`` (and the command
line's ``--help``) stays fast and does not load torch.
"""

__version__ = "0.1.0"

_API = {"Tagger": "streamtag.tagger", "Stream": "streamtag.tagger", "Result": "streamtag.tagger",
        "Event": "streamtag.events", "WindowScores": "streamtag.engine", "load_model": "streamtag.modelfile",
        "StreamtagError": "streamtag.errors"}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'streamtag' has no attribute {name!r}")
