"""Searches while the index changes: readers in threads and in processes, one writer.

The writer, one process per job as a user would run them, repeats rounds of: uploads
(``cbir.ops.add_image_bytes``), deletes (``cbir.ops.delete_ids``), an incremental
``index_folder`` run after files were added to and removed from the folder (its last
commit both adds and deletes), and a compaction. Each job reports its commits, so the
sequence of committed states (sets of ids) is known.

Readers search all the time with ``k`` larger than the index: each answer is the set of
ids of the index state it was computed from. Every answer must equal one committed
state (never a mix of two), and no search may fail.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cbir.index.store import IndexStore
from cbir_testing.reliability.corpus import write_corpus
from cbir_testing.reliability.crash import run_driver
from cbir_testing.reliability.report import Outcome

K_ALL = 10_000
#: Readers pause this long between searches (the machine has other work to do).
PAUSE_S = 0.005


@dataclass
class ConcurrencyResult:
    """The committed states in order, and what the readers saw."""

    states: list[frozenset[int]] = field(default_factory=list)
    answers: dict[str, list[frozenset[int]]] = field(
        default_factory=lambda: {"threads": [], "processes": []}
    )
    errors: dict[str, list[str]] = field(
        default_factory=lambda: {"threads": [], "processes": [], "writer": []}
    )

    def outcomes(self, who: str) -> list[Outcome]:
        """One outcome per answer and per error of ``who`` ("threads" or "processes")."""
        allowed = set(self.states)
        outs = []
        for a in self.answers[who]:
            o = Outcome()
            if a not in allowed:
                o.fail(
                    f"an answer of {len(a)} ids is no committed state (e.g. ids {sorted(a)[:8]})"
                )
            outs.append(o)
        outs += [Outcome().fail(f"search failed: {e}") for e in self.errors[who]]
        outs += [Outcome().fail(f"writer: {e}") for e in self.errors["writer"]]
        return outs


def _ids(index: Path) -> frozenset[int]:
    store = IndexStore.open(index)
    try:
        return frozenset(int(r[0]) for r in store.conn.execute("SELECT id FROM images"))
    finally:
        store.close()


def run_concurrency(
    workdir: Path,
    rounds: int = 1,
    threads: int = 2,
    processes: int = 1,
    n_images: int = 16,
    size: int = 64,
) -> ConcurrencyResult:
    """Run the writer's ``rounds`` with reader ``threads`` and ``processes`` searching."""
    from cbir.pipeline import index_folder
    from cbir.search.searcher import Searcher

    workdir = Path(workdir)
    folder, index = workdir / "photos", workdir / "index"
    files = write_corpus(folder, n_images)
    index_folder(folder, index, size=size, workers=1, progress=False)
    query = files[0]  # never deleted, never moved
    res = ConcurrencyResult(states=[_ids(index)])
    stop = threading.Event()
    stop_file = workdir / "stop"
    next_variant = [n_images]

    def apply(run_events: list[dict]) -> None:
        for e in run_events:
            if e.get("ev") == "commit":
                s = set(res.states[-1]) | set(e["ids"])
                res.states.append(frozenset(s - set(e["deleted"])))

    def job(args: list[str]) -> None:
        run = run_driver(args)
        apply(run.events)
        if run.returncode != 0:
            res.errors["writer"].append(
                f"{args[0]}: exit {run.returncode}: {run.stderr.strip()[-300:]}"
            )

    def writer() -> None:
        try:
            for r in range(rounds):
                uploads = workdir / f"uploads-{r}"
                new = write_corpus(uploads, 3, start=next_variant[0])
                next_variant[0] += 3
                job(["add", str(index), *map(str, new)])
                keep = {r["id"] for r in _rows(index) if r["path"] == str(query)}
                victims = sorted(res.states[-1] - keep)[-2:]
                job(["delete", str(index), ",".join(map(str, victims)), "--chunk", "1"])
                on_disk = sorted(p for p in folder.rglob("*.*") if p != query)
                for p in on_disk[r * 2 : r * 2 + 2]:
                    p.unlink()
                write_corpus(folder / f"new-{r}", 3, start=next_variant[0])
                next_variant[0] += 3
                job(
                    [
                        "index",
                        str(folder),
                        str(index),
                        "--commit-every",
                        "2",
                        "--batch-size",
                        "2",
                        "--size",
                        str(size),
                    ]
                )
                job(["compact", str(index)])
        except Exception as e:  # reported as a failure
            res.errors["writer"].append(f"{type(e).__name__}: {e}")
        finally:
            stop.set()
            stop_file.touch()

    shared = Searcher(index)
    feats = shared.embed_file(query)

    def reader(searcher: Searcher) -> None:
        while not stop.is_set():
            try:
                hits = searcher.search_features(feats, K_ALL)[0]
                res.answers["threads"].append(frozenset(h.id for h in hits))
            except Exception as e:  # counted as a failure
                res.errors["threads"].append(f"{type(e).__name__}: {e}")
            time.sleep(PAUSE_S)

    own = [Searcher(index) for _ in range(max(0, threads - 2))]
    searchers = [shared, shared][:threads] + own
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cbir_testing.reliability.driver",
                "read",
                str(index),
                str(query),
                "--stop",
                str(stop_file),
                "--pause",
                str(PAUSE_S),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    lines: list[list[str]] = [[] for _ in procs]
    errs: list[list[str]] = [[] for _ in procs]
    ready = [threading.Event() for _ in procs]

    def collect(i: int) -> None:
        for line in procs[i].stdout:  # type: ignore[union-attr]
            if line.startswith('{"ev": "ready"'):
                ready[i].set()
            lines[i].append(line)
        ready[i].set()

    collectors = [
        threading.Thread(target=collect, args=(i,), daemon=True) for i in range(len(procs))
    ]
    collectors += [
        threading.Thread(target=lambda i=i: errs[i].extend(procs[i].stderr), daemon=True)
        for i in range(len(procs))
    ]  # type: ignore[arg-type]
    for t in collectors:
        t.start()
    for ev in ready:
        ev.wait(120)
    readers = [threading.Thread(target=reader, args=(s,), daemon=True) for s in searchers]
    for t in readers:
        t.start()
    w = threading.Thread(target=writer)
    w.start()
    w.join()
    for t in readers:
        t.join(60)
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            res.errors["processes"].append("a reader process did not stop")
    for t in collectors:
        t.join(60)
    for s in {id(s): s for s in searchers}.values():
        s.close()
    for out, err in zip(lines, errs, strict=True):
        for line in out:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("ev") == "answer":
                res.answers["processes"].append(frozenset(e["ids"]))
            elif e.get("ev") == "error":
                res.errors["processes"].append(e["error"])
        if "Traceback" in "".join(err):
            res.errors["processes"].append("".join(err).strip().splitlines()[-1][:300])
    shutil.rmtree(folder, ignore_errors=True)
    return res


def _rows(index: Path) -> list:
    store = IndexStore.open(index)
    try:
        return store.rows()
    finally:
        store.close()
