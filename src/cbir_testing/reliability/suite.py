"""The whole reliability suite: every fault family and attack, tallied for the table.

``python -m cbir_testing.reliability`` runs :func:`run_all` with the release counts; the default
test suite runs the same functions with small counts (see ``tests/reliability``).
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cbir_testing.reliability.corpus import encode, variant, write_corpus
from cbir_testing.reliability.crash import CrashLab
from cbir_testing.reliability.report import Tally

Log = Callable[[str], None]


@dataclass
class Counts:
    """How many trials of each kind to run."""

    kill_time: int = 100
    kill_step: int = 100
    kill_delete: int = 100
    kill_compact: int = 100
    faults: int = 10
    fuzz: int = 1000
    rounds: int = 5
    reader_threads: int = 3
    reader_processes: int = 2
    #: Seconds of the service soak (0: not run) against the 100k-image load index.
    soak_seconds: float = 600.0

    @classmethod
    def quick(cls) -> Counts:
        """The fast part (the default test suite): 10 kills, 100 malformed inputs."""
        return cls(
            kill_time=3,
            kill_step=3,
            kill_delete=2,
            kill_compact=2,
            faults=1,
            fuzz=100,
            rounds=1,
            reader_threads=2,
            reader_processes=1,
            soak_seconds=0.0,
        )


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def crash_tallies(lab: CrashLab, counts: Counts, seed: int = 0, log: Log = _stderr) -> list[Tally]:
    """Kill -9 trials: index (random time, random write step), delete, compaction."""
    rng = random.Random(seed)
    plan = [
        (
            "kill -9 during `cbir index` (random time)",
            counts.kill_time,
            lambda: lab.index_trial(rng, "time"),
        ),
        (
            "kill -9 during `cbir index` (random write step)",
            counts.kill_step,
            lambda: lab.index_trial(rng, "step"),
        ),
        (
            "kill -9 during delete (random write step)",
            counts.kill_delete,
            lambda: lab.delete_trial(rng),
        ),
        (
            "kill -9 during compaction (random write step)",
            counts.kill_compact,
            lambda: lab.compact_trial(rng),
        ),
    ]
    out = []
    for name, n, trial in plan:
        t = Tally(name)
        for i in range(n):
            t.add(trial())
            lab.cleanup()
            if (i + 1) % 25 == 0:
                log(f"  {name}: {i + 1}/{n}")
        log(f"{name}: {t.trials} trials, {t.failures} failures, {t.lost} lost")
        out.append(t)
    return out


def fault_tallies(
    lab: CrashLab, workdir: Path, counts: Counts, seed: int = 0, log: Log = _stderr
) -> list[Tally]:
    """Read-only folder, permission denied, full disk, file size limit."""
    from cbir_testing.reliability.faults import FaultLab

    extra = workdir / "extra-images"
    write_corpus(extra, 6, start=lab.n_images + 100)
    query = next(iter(sorted(lab.corpus.glob("*.jpg"))))
    fl = FaultLab(
        workdir / "faults", lab.reference, extra, query, encode(variant(lab.n_images + 200), "PNG")
    )
    rng = random.Random(seed + 1)
    plan = [
        ("read-only index folder (EROFS)", fl.read_only_trial, fl.mount_problem),
        ("no write permission (EACCES)", fl.permission_trial, None),
        ("full disk (tmpfs, ENOSPC)", fl.full_disk_trial, fl.mount_problem),
        ("file size limit (RLIMIT_FSIZE, EFBIG)", fl.file_size_trial, None),
    ]
    out = []
    for name, trial, skip in plan:
        t = Tally(name)
        if skip:
            t.skipped = skip
        else:
            for _ in range(counts.faults):
                t.add(trial(rng))
                fl.cleanup()
        log(
            f"{name}: "
            + (
                f"not run ({skip})"
                if skip
                else f"{t.trials} trials, {t.failures} failures, {t.lost} lost"
            )
        )
        out.append(t)
    return out


def fuzz_tallies(
    index: Path, workdir: Path, counts: Counts, seed: int = 0, log: Log = _stderr
) -> list[Tally]:
    """Malformed inputs through ``cbir index``, ``cbir search`` and the upload endpoint."""
    from cbir_testing.reliability.fuzz import run_fuzz

    res = run_fuzz(counts.fuzz, workdir / "fuzz", index, seed=seed)
    out = []
    for door, name in (
        ("index", "malformed inputs through `cbir index`"),
        ("search", "malformed inputs through `cbir search`"),
        ("upload", "malformed inputs through POST /images and /search"),
    ):
        t = Tally(name, measures_loss=False)
        for o in res.outcomes(door):
            t.add(o)
        log(f"{name}: {t.trials} inputs, {t.failures} failures ({res.seconds[door]:.0f} s)")
        out.append(t)
    return out


def concurrency_tallies(workdir: Path, counts: Counts, log: Log = _stderr) -> list[Tally]:
    """Searches in threads and processes while uploads, deletes, index runs and compactions commit."""
    from cbir_testing.reliability.concurrency import run_concurrency

    res = run_concurrency(
        workdir / "concurrency", counts.rounds, counts.reader_threads, counts.reader_processes
    )
    out = []
    for who, name in (
        ("threads", "searches in threads during writes (answers)"),
        ("processes", "searches in processes during writes (answers)"),
    ):
        t = Tally(name, measures_loss=False)
        for o in res.outcomes(who):
            t.add(o)
        t.notes["committed states"] = len(res.states)
        log(
            f"{name}: {t.trials} answers, {t.failures} failures, {len(res.states)} committed states"
        )
        out.append(t)
    return out


FAMILIES = ("crash", "faults", "fuzz", "concurrency", "attacks", "soak")


def run_all(
    workdir: Path, counts: Counts, seed: int = 0, log: Log = _stderr, only: str | None = None
) -> list[Tally]:
    """Every family (or ``only`` one of :data:`FAMILIES`), in order; returns the tallies
    for :func:`cbir_testing.reliability.report.table`."""
    workdir = Path(workdir)
    if only == "concurrency":
        return concurrency_tallies(workdir, counts, log)
    if only == "attacks":
        return attack_tallies(workdir, log)
    if only == "soak":
        return [soak_tallies(counts, log)]
    log(f"building the corpus and a clean reference run in {workdir}")
    lab = CrashLab(workdir / "crash")
    if only in ("faults", "fuzz"):
        if only == "faults":
            return fault_tallies(lab, workdir, counts, seed, log)
        return fuzz_tallies(lab.reference, workdir, counts, seed, log)
    tallies = crash_tallies(lab, counts, seed, log)
    if only == "crash":
        return tallies
    tallies += fault_tallies(lab, workdir, counts, seed, log)
    tallies += fuzz_tallies(lab.reference, workdir, counts, seed, log)
    tallies += concurrency_tallies(workdir, counts, log)
    tallies += attack_tallies(workdir, log)
    if counts.soak_seconds > 0:
        tallies.append(soak_tallies(counts, log))
    return tallies


def attack_tallies(workdir: Path, log: Log = _stderr) -> list[Tally]:
    """Issue 16's attacks on the service and the index (cbir_testing.reliability.attacks)."""
    from cbir_testing.reliability.attacks import attack_tallies as run

    return run(workdir, log)


def soak_tallies(counts: Counts, log: Log = _stderr) -> Tally:
    """The service soak against the load benchmark's 100k-image index (built once, cached)."""
    from cbir_testing.collection import load_index
    from cbir_testing.reliability.soak import soak_tally

    index_dir, _ = load_index(log=log)
    return soak_tally(index_dir, counts.soak_seconds, log=log)
