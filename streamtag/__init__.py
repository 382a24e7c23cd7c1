"""streamtag: a real-time sound event tagger (Piczak CNN on streaming log-mel features)."""

__version__ = "0.1.0"
