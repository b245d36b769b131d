"""contrahash: unsupervised deep hashing for image retrieval."""

__version__ = "0.1.0"
