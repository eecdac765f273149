"""Code kinds (float vectors, binary codes, sparse codes) and how each is indexed.

- :mod:`cbir.codes.registry`: ``code_kind(name_or_transform)`` and ``KINDS``.
- :mod:`cbir.codes.base`: :class:`~cbir.codes.base.CodeKind`, what every kind does.
- :mod:`cbir.codes.float`, :mod:`cbir.codes.binary`, :mod:`cbir.codes.sparse`,
  :mod:`cbir.codes.subic` (SUBIC's blocks of one-hot): the kinds.
- :mod:`cbir.codes.bits`: bit packing, popcount and Hamming distances (the one copy).

Nothing is imported here, so that the engines in :mod:`cbir.index` can import
:mod:`cbir.codes.bits` without a cycle.
"""
