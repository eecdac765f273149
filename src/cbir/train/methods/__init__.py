"""Training methods, one family per module (a :class:`~cbir.train.methods.base.Method`
each); :mod:`cbir.train.registry` maps method names to them."""
