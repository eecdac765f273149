"""cbir: content-based image retrieval at scale on one CPU machine."""

__version__ = "0.1.0"
