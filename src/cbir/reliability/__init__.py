"""Reliability: the integrity check (``cbir check``) and the fault suite behind
``python -m cbir.reliability`` (kills, full disks, read-only folders, malformed inputs,
concurrent readers and writers)."""

from cbir.reliability.check import CheckReport, check_index

__all__ = ["CheckReport", "check_index"]
