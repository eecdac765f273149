"""The fault suite behind ``python -m cbir_testing.reliability`` (kills, full disks,
read-only folders, malformed inputs, concurrent readers and writers). The integrity check
it applies after each trial is the user command ``cbir check``
(:func:`cbir.index.check.check_index`)."""
