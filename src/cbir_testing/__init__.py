"""Test and benchmark tools for cbir, kept out of the runtime package ``cbir``.

- :mod:`cbir_testing.reliability`: the fault suite (``python -m cbir_testing.reliability``):
  kills, full disks, read-only folders, malformed inputs, concurrent readers and writers.
- :mod:`cbir_testing.loadgen`: a bounded loopback load against ``cbir serve``.
- :mod:`cbir_testing.collection`: the 100,000-file collection the load tests serve.

These modules import test-only packages (hypothesis, httpx, fastapi.testclient,
scikit-image; ``pip install 'cbir[test]'``); ``cbir`` itself never imports them.
"""
