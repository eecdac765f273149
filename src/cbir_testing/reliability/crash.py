"""Crash safety: kill -9 a writer at random moments, then check what is left.

Each trial copies a starting index, runs one write job in a subprocess
(:mod:`cbir_testing.reliability.driver`) and kills it with SIGKILL, either after a random time
or at a random write step. Then:

1. the index opens and :func:`check_index` finds no error;
2. every image whose commit the job reported before the kill is there, with its
   content's sha256 and its features (``data lost`` counts those that are not);
3. a re-run of the job completes the rest, and the result equals a clean run's.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cbir.index import vector_index
from cbir.index.check import check_index
from cbir.index.store import IndexStore
from cbir_testing.reliability.corpus import write_corpus
from cbir_testing.reliability.report import Outcome

#: A job that runs longer than this is a hang (a failure).
JOB_TIMEOUT_S = 180.0


@dataclass
class DriverRun:
    """What one driver process printed before it ended (or was killed)."""

    events: list[dict[str, Any]]
    returncode: int
    stderr: str
    seconds: float

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL

    def of(self, ev: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("ev") == ev]


def run_driver(
    args: list[str], kill_after: float | None = None, timeout: float = JOB_TIMEOUT_S
) -> DriverRun:
    """Run ``python -m cbir_testing.reliability.driver ARGS``.

    With ``kill_after``, SIGKILL it that many seconds after its job started (imports
    done). ``seconds`` is the job's own time (from its start to its end).
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "cbir_testing.reliability.driver", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    err: list[str] = []
    started = threading.Event()
    t_start = [time.perf_counter()]

    def read_out() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            if not started.is_set() and line.startswith('{"ev": "start"'):
                t_start[0] = time.perf_counter()
                started.set()
            lines.append(line)

    readers = [
        threading.Thread(target=read_out, daemon=True),
        threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True),  # type: ignore[arg-type]
    ]
    for t in readers:
        t.start()
    deadline = time.perf_counter() + timeout
    if kill_after is not None:
        while not started.wait(0.05) and proc.poll() is None and time.perf_counter() < deadline:
            pass
        time.sleep(max(0.0, t_start[0] + kill_after - time.perf_counter()))
        proc.kill()
    try:
        proc.wait(max(0.1, deadline - time.perf_counter()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    t_end = time.perf_counter()
    hung = kill_after is None and proc.returncode == -signal.SIGKILL
    for t in readers:
        t.join(10)
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            pass  # a line cut by the kill
    stderr = "".join(err) + ("\n(hung: killed after the time limit)" if hung else "")
    return DriverRun(events, proc.returncode, stderr, t_end - t_start[0])


def _features_by_key(index_dir: Path, key: str = "path") -> dict[Any, np.ndarray]:
    store = IndexStore.open(index_dir)
    try:
        rows = store.rows()
        feats = store.features([r["id"] for r in rows]) if rows else np.zeros((0, 0), np.float32)
        return {r[key]: feats[i] for i, r in enumerate(rows)}
    finally:
        store.close()


def _rows_by_path(index_dir: Path) -> dict[str, Any]:
    store = IndexStore.open(index_dir)
    try:
        return {r["path"]: r for r in store.rows()}
    finally:
        store.close()


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-3, atol=1e-4))


@dataclass
class CrashLab:
    """A corpus, a clean reference run and starting indexes, for kill trials.

    Args:
        workdir: an empty folder for everything the trials write.
        n_images: images in the corpus.
        commit_every: images per commit of the killed ``index`` job.
        size: backbone input size (small keeps the trials quick).
    """

    workdir: Path
    n_images: int = 36
    commit_every: int = 3
    size: int = 64
    corpus: Path = field(init=False)
    reference: Path = field(init=False)
    ref_feats: dict[str, np.ndarray] = field(init=False)
    index_seconds: dict[str, float] = field(init=False)
    index_steps: dict[str, int] = field(init=False)
    partial: Path = field(init=False)
    compact_start: Path = field(init=False)
    compact_steps: int = field(init=False)
    delete_steps: int = field(init=False)
    _trial: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.corpus = self.workdir / "corpus"
        n_first = self.n_images * 2 // 3
        # The partial start: the first two thirds indexed, plus 3 files removed since.
        first = write_corpus(self.corpus, self.n_images + 3)
        later = self.workdir / "later"
        later.mkdir()
        for i, p in enumerate(first[n_first : self.n_images]):
            p.rename(later / f"{i:04d}")
        self.partial = self.workdir / "start-partial"
        self._index(self.partial)
        for p in first[self.n_images :]:
            p.unlink()
        for i, p in enumerate(first[n_first : self.n_images]):
            (later / f"{i:04d}").rename(p)
        later.rmdir()
        assert len(list(self.corpus.rglob("*.*"))) == self.n_images
        # A clean run: the reference, the time and the number of write steps it takes.
        self.reference = self.workdir / "reference"
        run = run_driver(self._index_args(self.reference))
        if run.returncode != 0 or not run.of("done"):
            raise RuntimeError(f"the clean index run failed: {run.stderr[-2000:]}")
        self.index_seconds = {"empty": run.seconds}
        self.index_steps = {"empty": run.of("done")[0]["steps"]}
        probe = self.workdir / "probe-partial"
        shutil.copytree(self.partial, probe)
        run = run_driver(self._index_args(probe))
        if run.returncode != 0 or not run.of("done"):
            raise RuntimeError(f"the clean index run failed: {run.stderr[-2000:]}")
        self.index_seconds["partial"] = run.seconds
        self.index_steps["partial"] = run.of("done")[0]["steps"]
        shutil.rmtree(probe)
        self.ref_feats = _features_by_key(self.reference)
        # The compaction start: many segments, a third of the rows deleted.
        self.compact_start = self.workdir / "start-compact"
        shutil.copytree(self.reference, self.compact_start)
        ids = sorted(_features_by_key(self.compact_start, "id"))
        run = run_driver(
            ["delete", str(self.compact_start), ",".join(map(str, ids[::3])), "--chunk", "2"]
        )
        self.delete_steps = run.of("done")[0]["steps"] if run.returncode == 0 else 0
        probe = self.workdir / "probe-compact"
        shutil.copytree(self.compact_start, probe)
        run = run_driver(["compact", str(probe)])
        if run.returncode != 0 or self.delete_steps == 0:
            raise RuntimeError(f"the clean delete/compact runs failed: {run.stderr[-2000:]}")
        self.compact_steps = run.of("done")[0]["steps"]
        shutil.rmtree(probe)

    # ---------------------------------------------------------------- helpers
    def _index_args(self, index: Path) -> list[str]:
        return [
            "index",
            str(self.corpus),
            str(index),
            "--commit-every",
            str(self.commit_every),
            "--batch-size",
            str(self.commit_every),
            "--size",
            str(self.size),
        ]

    def _index(self, index: Path) -> None:
        from cbir.pipeline import index_folder

        index_folder(self.corpus, index, size=self.size, workers=1, progress=False)

    def _fresh(self, name: str, start: Path | None) -> Path:
        self._trial += 1
        dst = self.workdir / f"trial-{self._trial:04d}-{name}"
        if start is not None:
            shutil.copytree(start, dst)
        return dst

    def _checked(self, index: Path, out: Outcome, when: str, final: bool = False) -> bool:
        """check_index finds no error (and, after a re-run, no file changed or missing)."""
        rep = check_index(index)
        if not rep.ok:
            out.fail(f"{when}: check: {' | '.join(rep.errors[:3])}")
        elif rep.changed or (final and rep.missing):
            out.fail(f"{when}: check: {len(rep.changed)} changed, {len(rep.missing)} missing files")
        return rep.ok

    def _killed_note(self, run: DriverRun, how: str) -> str:
        if not run.killed:
            return f"{how}: finished before the kill"
        commits = len(run.of("commit"))
        return (
            f"{how}: killed after {commits} commit(s)"
            if commits
            else f"{how}: killed before any commit"
        )

    # ----------------------------------------------------------------- trials
    def index_trial(self, rng: random.Random, how: str = "time") -> Outcome:
        """Kill an ``index`` job (from an empty or a partial index) and check it."""
        kind = "partial" if rng.random() < 0.5 else "empty"
        start = self.partial if kind == "partial" else None
        index = self._fresh("index", start)
        committed: dict[str, str] = {}
        if start is not None:
            committed = {
                p: r["sha256"] for p, r in _rows_by_path(start).items() if p in self.ref_feats
            }
        if how == "time":
            run = run_driver(
                self._index_args(index), kill_after=rng.uniform(0, self.index_seconds[kind])
            )
        else:
            step = rng.randint(1, self.index_steps[kind])
            run = run_driver(["--die-at", str(step), *self._index_args(index)])
        out = Outcome(note=self._killed_note(run, how))
        if not run.killed and run.returncode != 0:
            return out.fail(f"the job failed by itself: {run.stderr.strip()[-500:]}")
        for ev in run.of("commit"):
            committed.update({p: sha for p, sha in ev["added"]})
        if IndexStore.exists(index):
            if self._checked(index, out, "after the kill"):
                rows = _rows_by_path(index)
                gone = [
                    p for p, sha in committed.items() if p not in rows or rows[p]["sha256"] != sha
                ]
                if gone:
                    out.lost += len(gone)
                    out.fail(
                        f"{len(gone)} committed image(s) missing after the kill, e.g. {gone[0]}"
                    )
        elif committed and start is None:
            out.lost += len(committed)
            out.fail("the index is gone but commits were reported")
        return self._rerun_index(index, out)

    def _rerun_index(self, index: Path, out: Outcome) -> Outcome:
        try:
            self._index(index)
        except Exception as e:  # the re-run must complete whatever the kill left
            return out.fail(f"re-run: {type(e).__name__}: {e}")
        if not self._checked(index, out, "after the re-run", final=True):
            return out
        feats = _features_by_key(index)
        if set(feats) != set(self.ref_feats):
            return out.fail(f"re-run: {len(feats)} images, expected {len(self.ref_feats)}")
        wrong = [p for p, f in feats.items() if not _same(f, self.ref_feats[p])]
        if wrong:
            out.lost += len(wrong)
            out.fail(
                f"re-run: {len(wrong)} image(s) with other features than a clean run, e.g. {wrong[0]}"
            )
        return out

    def delete_trial(self, rng: random.Random) -> Outcome:
        """Kill a job deleting a third of the images (in chunks of 2) at a random step."""
        index = self._fresh("delete", self.reference)
        before = _features_by_key(index, "id")
        ids = sorted(before)
        victims = rng.sample(ids, len(ids) // 3)
        step = rng.randint(1, max(1, self.delete_steps))
        run = run_driver(
            [
                "--die-at",
                str(step),
                "delete",
                str(index),
                ",".join(map(str, victims)),
                "--chunk",
                "2",
            ]
        )
        n_chunks = (len(victims) + 1) // 2
        done_chunks = len(run.of("delete-done"))
        out = Outcome(
            note=f"killed after {done_chunks} of {n_chunks} delete commits"
            if run.killed
            else "finished before the kill"
        )
        if not run.killed and run.returncode != 0:
            return out.fail(f"the job failed by itself: {run.stderr.strip()[-500:]}")
        done = {i for e in run.of("delete-done") for i in e["ids"]}
        started = {i for e in run.of("delete-start") for i in e["ids"]}
        if self._checked(index, out, "after the kill"):
            now = _features_by_key(index, "id")
            back = done & set(now)
            if back:
                out.fail(f"deleted id(s) {sorted(back)[:5]} are back")
            untouched = set(ids) - started
            lost = [i for i in untouched if i not in now or not _same(now[i], before[i])]
            if lost:
                out.lost += len(lost)
                out.fail(
                    f"{len(lost)} image(s) not asked to be deleted are missing or changed: {lost[:5]}"
                )
            inflight = started - done
            if inflight and 0 < len(inflight & set(now)) < len(inflight):
                out.fail(
                    f"half of a delete commit is applied: {sorted(inflight)} -> {sorted(inflight & set(now))}"
                )
        try:
            from cbir.ops import delete_ids

            delete_ids(index, victims)
        except Exception as e:  # the re-run must complete
            return out.fail(f"re-run: {type(e).__name__}: {e}")
        if self._checked(index, out, "after the re-run"):
            now = _features_by_key(index, "id")
            if set(now) != set(ids) - set(victims):
                out.fail("re-run: the images left are not all but the deleted ones")
        return out

    def compact_trial(self, rng: random.Random) -> Outcome:
        """Kill a compaction (and the search-index refresh after it) at a random step."""
        index = self._fresh("compact", self.compact_start)
        before = _features_by_key(index, "id")
        step = rng.randint(1, self.compact_steps)
        run = run_driver(["--die-at", str(step), "compact", str(index)])
        inside = bool(run.of("compact-start")) and not run.of("compact-done")
        out = Outcome(
            note=("inside compaction" if inside else "in the refresh after it")
            if run.killed
            else "finished"
        )
        if not run.killed and run.returncode != 0:
            return out.fail(f"the job failed by itself: {run.stderr.strip()[-500:]}")
        if self._checked(index, out, "after the kill"):
            now = _features_by_key(index, "id")
            lost = [i for i in before if i not in now or not np.array_equal(now[i], before[i])]
            if lost or set(now) != set(before):
                out.lost += len(lost)
                out.fail(
                    f"{len(lost)} image(s) missing or changed, {len(set(now) - set(before))} extra"
                )
        try:
            store = IndexStore.open(index)
            try:
                store.lock()
                store.compact(force=True)
                vector_index.refresh(store)
                n_segments = store.conn.execute("SELECT COUNT(*) FROM segments").fetchone()[0]
            finally:
                store.close()
        except Exception as e:  # the re-run must complete
            return out.fail(f"re-run: {type(e).__name__}: {e}")
        if self._checked(index, out, "after the re-run"):
            now = _features_by_key(index, "id")
            if n_segments != 1 or set(now) != set(before):
                out.fail(
                    f"re-run: {n_segments} segments, {len(now)} images (expected 1, {len(before)})"
                )
        return out

    def cleanup(self, keep: int = 0) -> None:
        """Remove trial folders (all but the last ``keep``)."""
        trials = sorted(self.workdir.glob("trial-*"))
        for p in trials[: len(trials) - keep] if keep else trials:
            shutil.rmtree(p, ignore_errors=True)
