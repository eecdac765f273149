"""Write faults: a read-only index folder, permission denied, a full disk, a file size limit.

Each trial copies a starting index, runs ``cbir index NEW_IMAGES --index INDEX`` (and,
where the fault can be set up in this process, the upload endpoint) while the fault is
in place, and asks:

- a failed write is one clear line (``cbir: error: ...`` naming the cause, exit 1, no
  traceback; HTTP 507 with a JSON error for uploads); reads still work;
- once the fault is gone, :func:`check_index` finds no error and every image of the
  starting index is there with its features (``data lost`` counts those that are not);
- a re-run without the fault completes.

How the faults are made: a read-only bind mount (EROFS) and a small tmpfs (ENOSPC)
need mount rights (root or CAP_SYS_ADMIN); without them those trials are skipped and
say so. Permission denied (EACCES) is a folder without write permission; root ignores
permissions, so as root the ``cbir`` subprocess runs without CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH. The file size limit (RLIMIT_FSIZE, EFBIG) needs no rights.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from cbir.index.check import check_index
from cbir_testing.reliability.report import Outcome

#: Phrases a write-fault error names its cause with (strerror texts and cbir's own).
CAUSES = (
    "Read-only file system",
    "not writable",
    "Permission denied",
    "No space left on device",
    "database or disk is full",
    "File too large",
    "disk I/O error",
    "readonly database",
)
CLI_TIMEOUT_S = 180
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


# ------------------------------------------------------------------ the means
def mount_problem() -> str | None:
    """None if this process can mount a tmpfs (and bind-mount read-only), else why not."""
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "no mount/umount commands"
    d = tempfile.mkdtemp(prefix="cbir-mount-probe-")
    try:
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", d], capture_output=True, text=True
        )
        if r.returncode != 0:
            return f"mount is not permitted here ({r.stderr.strip()[:120] or r.returncode})"
        subprocess.run(["umount", d], check=False, capture_output=True)
        return None
    finally:
        os.rmdir(d)


def _mount(*args: str) -> None:
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"mount {' '.join(args)}: {r.stderr.strip()}")


def _umount(path: Path) -> None:
    r = subprocess.run(["umount", str(path)], capture_output=True, text=True)
    if r.returncode != 0:  # still busy: detach it now, freed when the last user goes
        subprocess.run(["umount", "-l", str(path)], capture_output=True, text=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted at ``path`` (unmounted on exit)."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    try:
        yield path
    finally:
        _umount(path)


@contextlib.contextmanager
def read_only_view(src: Path, view: Path) -> Iterator[Path]:
    """``src`` bind-mounted read-only at ``view`` (writes there fail with EROFS)."""
    view.mkdir(parents=True, exist_ok=True)
    _mount("--bind", str(src), str(view))
    try:
        _mount("-o", "remount,bind,ro", str(view))
        yield view
    finally:
        _umount(view)


def drop_dac() -> None:
    """preexec_fn: after exec, root no longer overrides file permissions."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def fsize_limit(limit: int) -> Callable[[], None]:
    """preexec_fn: no file may grow past ``limit`` bytes (writes past it fail with EFBIG)."""

    def pre() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return pre


# ---------------------------------------------------------------- the checks
def run_cli(
    args: list[str], preexec: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    """``cbir ARGS`` in a subprocess (rc 124 when it ran past the time limit)."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "cbir.cli", *args],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            preexec_fn=preexec,
        )
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(
            e.cmd, 124, str(e.stdout or ""), f"timed out after {CLI_TIMEOUT_S} s"
        )


def clear_cli_error(
    r: subprocess.CompletedProcess[str], causes: tuple[str, ...] = CAUSES
) -> str | None:
    """None if ``r`` failed with one clear line naming a cause, else what is wrong."""
    err = r.stderr.strip()
    if r.returncode == 124:
        return "hung past the time limit"
    if "Traceback" in err:
        return f"traceback: {err.splitlines()[-1][:200]}"
    if r.returncode != 1:
        return f"exit status {r.returncode}: {err[-200:]}"
    last = err.splitlines()[-1] if err else ""
    if not last.startswith("cbir: error: "):
        return f"no one-line error: {err[-200:]!r}"
    if not any(c.lower() in last.lower() for c in causes):
        return f"the error does not name the cause: {last[:200]}"
    return None


def snapshot(index: Path) -> dict[str, np.ndarray]:
    """path -> features of every image in an index."""
    from cbir.index.store import IndexStore

    store = IndexStore.open(index)
    try:
        rows = store.rows()
        feats = store.features([r["id"] for r in rows]) if rows else np.zeros((0, 0), np.float32)
        return {r["path"]: feats[i] for i, r in enumerate(rows)}
    finally:
        store.close()


def _after(index: Path, before: dict[str, np.ndarray], out: Outcome, when: str) -> None:
    rep = check_index(index)
    if not rep.ok:
        out.fail(f"{when}: check: {' | '.join(rep.errors[:3])}")
        return
    now = snapshot(index)
    lost = [
        p
        for p, f in before.items()
        if p not in now or not np.allclose(now[p], f, rtol=1e-3, atol=1e-4)
    ]
    if lost:
        out.lost += len(lost)
        out.fail(
            f"{when}: {len(lost)} image(s) of the old index missing or changed, e.g. {lost[0]}"
        )


def _upload(index: Path, data: bytes, key: str = "reliability-key-0123456789") -> tuple[int, dict]:
    from fastapi.testclient import TestClient

    from cbir.errors import CbirError
    from cbir.service.app import create_app

    try:
        app = create_app(index, api_key=key, allowed_hosts=["testserver"])
    except CbirError as e:
        return 0, {"error": f"the service does not start: {e}"}
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/images", files={"file": ("new.png", data)}, headers={"X-API-Key": key})
        try:
            body = r.json()
        except ValueError:
            body = {"raw": r.text[:200]}
    return r.status_code, body


def _check_upload(status: int, body: dict, out: Outcome, may_succeed: bool) -> None:
    if status in (200, 201) and may_succeed:
        return
    if status != 507 or not any(c.lower() in str(body.get("error")).lower() for c in CAUSES):
        out.fail(f"upload under the fault: HTTP {status} {str(body)[:200]}")


class FaultLab:
    """A starting index, new images to add and a query, for write-fault trials.

    Args:
        workdir: an empty folder for the trials.
        start: an index to copy for each trial (its images must stay where they are).
        extra: a folder of images the start index does not hold.
        query: an image file to search with.
        upload: the bytes of an image to upload.
        size: the start index's backbone input size.
    """

    def __init__(
        self, workdir: Path, start: Path, extra: Path, query: Path, upload: bytes, size: int = 64
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.start, self.extra, self.query, self.upload, self.size = (
            start,
            extra,
            query,
            upload,
            size,
        )
        self.before = snapshot(start)
        self.start_bytes = sum(p.stat().st_size for p in start.iterdir() if p.is_file())
        self._n = 0
        self.mount_problem = mount_problem()

    def _copy(self, parent: Path | None = None) -> Path:
        self._n += 1
        dst = (parent or self.workdir) / f"trial-{self._n:04d}"
        shutil.copytree(self.start, dst)
        return dst

    def _index_args(self, index: Path) -> list[str]:
        return [
            "index",
            str(self.extra),
            "--index",
            str(index),
            "--size",
            str(self.size),
            "--decode-threads",
            "1",
        ]

    def _rerun(self, index: Path, out: Outcome) -> None:
        r = run_cli(self._index_args(index))
        if r.returncode != 0:
            out.fail(f"re-run without the fault: exit {r.returncode}: {r.stderr.strip()[-200:]}")
            return
        rep = check_index(index)
        if not rep.ok:
            out.fail(f"re-run: check: {' | '.join(rep.errors[:3])}")
        elif not {str(p) for p in self.extra.rglob("*.*")} <= set(snapshot(index)):
            out.fail("re-run: not every new image is in the index")

    def _search_works(
        self, index: Path, out: Outcome, preexec: Callable[[], None] | None = None
    ) -> None:
        r = run_cli(["search", str(index), str(self.query), "-k", "3", "--json"], preexec)
        if r.returncode != 0:
            out.fail(f"search under the fault: exit {r.returncode}: {r.stderr.strip()[-200:]}")

    # ----------------------------------------------------------------- trials
    def read_only_trial(self, rng: random.Random) -> Outcome:
        """The index folder is a read-only mount (EROFS)."""
        index = self._copy()
        out = Outcome()
        with read_only_view(index, self.workdir / f"ro-{self._n:04d}") as view:
            why = clear_cli_error(run_cli(self._index_args(view)))
            if why:
                out.fail(f"cbir index: {why}")
            self._search_works(view, out)
            _check_upload(*_upload(view, self.upload), out, may_succeed=False)
            _after(view, self.before, out, "the read-only index")
        _after(index, self.before, out, "after the fault")
        self._rerun(index, out)
        return out

    def permission_trial(self, rng: random.Random) -> Outcome:
        """No write permission on the folder, or on the database file (EACCES)."""
        index = self._copy()
        out = Outcome()
        target = index if rng.random() < 0.5 else index / "meta.sqlite"
        out.note = "folder not writable" if target == index else "meta.sqlite not writable"
        mode = target.stat().st_mode
        target.chmod(0o555 if target.is_dir() else 0o444)
        try:
            why = clear_cli_error(run_cli(self._index_args(index), drop_dac))
            if why:
                out.fail(f"cbir index: {why}")
            self._search_works(index, out, drop_dac)
        finally:
            target.chmod(mode)
        _after(index, self.before, out, "after the fault")
        self._rerun(index, out)
        return out

    def full_disk_trial(self, rng: random.Random) -> Outcome:
        """The index is on a tmpfs with 0 to 1.2 x its size free when the job starts."""
        mnt = self.workdir / f"tmpfs-{self._n + 1:04d}"
        max_free = int(1.2 * self.start_bytes)
        free = rng.randint(0, max_free)
        size = self.start_bytes + max_free + (1 << 20)
        out = Outcome()
        with tmpfs(mnt, size):
            index = self._copy(mnt)
            st = os.statvfs(mnt)
            ballast = st.f_bavail * st.f_frsize - free
            with open(mnt / "ballast", "wb") as f:
                f.write(b"\0" * max(0, ballast))
            r = run_cli(self._index_args(index))
            why = clear_cli_error(r) if r.returncode != 0 else None
            out.note = "the write failed" if r.returncode else "it fitted"
            if why:
                out.fail(f"cbir index: {why}")
            self._search_works(index, out)
            _check_upload(*_upload(index, self.upload), out, may_succeed=True)
            (mnt / "ballast").unlink()
            _after(index, self.before, out, "after freeing space")
            local = self._copy_out(index)
        self._rerun(local, out)
        return out

    def _copy_out(self, index: Path) -> Path:
        dst = self.workdir / f"{index.parent.name}-{index.name}"
        shutil.copytree(index, dst)
        return dst

    def file_size_trial(self, rng: random.Random) -> Outcome:
        """No file may grow past a random limit (RLIMIT_FSIZE): 4 KiB to 2.5 x the largest file."""
        index = self._copy()
        largest = max(p.stat().st_size for p in self.start.iterdir() if p.is_file())
        limit = rng.randint(4 * 1024, int(2.5 * largest))
        r = run_cli(self._index_args(index), fsize_limit(limit))
        out = Outcome(note="the write failed" if r.returncode else "it fitted")
        why = clear_cli_error(r) if r.returncode != 0 else None
        if why:
            out.fail(f"cbir index: {why}")
        _after(index, self.before, out, "after the fault")
        self._rerun(index, out)
        return out

    def cleanup(self) -> None:
        for p in self.workdir.glob("trial-*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in self.workdir.glob("tmpfs-*"):
            shutil.rmtree(p, ignore_errors=True)
