"""Unsupervised binary codes: random-hyperplane LSH, ITQ, a binary autoencoder.

All take numpy ``(n, dim)`` features and return ``(n, bits)`` int8 codes in {-1, +1},
deterministic for a seed.
"""

from cbir.unsupervised.autoencoder import BinaryAutoencoder
from cbir.unsupervised.itq import ITQ
from cbir.unsupervised.lsh import LSH

__all__ = ["ITQ", "LSH", "BinaryAutoencoder"]
