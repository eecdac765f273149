"""``check_index``: is an index directory whole?

What is checked (errors make the index broken; warnings do not):

- SQLite says the database is intact (``PRAGMA quick_check``); the meta rows are there.
- Every feature segment the metadata names exists, loads, has the recorded shape, and
  holds finite numbers; every image row points at a row inside a segment, no two rows
  share one, and ids are below the AUTOINCREMENT counter (ids are never reused).
- Generations agree: no segment, row or search-index file is newer than the store.
- The search index: the file on disk, when it is up to date, holds exactly the live ids
  (each once, with the vector of its features where faiss can reconstruct it); when it
  is behind, it holds every row committed before it was written. The index that readers
  search (the file brought up to date, as :func:`cbir.index.vector_index.load` does)
  holds exactly the live ids, and its size equals the row count.
- Files: an indexed file that still exists is hashed and compared with its recorded
  sha256; one changed or removed on disk since is reported, not counted as broken
  (except uploads, which the index owns), with the folder to re-index for them (the
  recorded ``cbir index`` root holding them, :mod:`cbir.index.collection`). Files left over by an interrupted write are
  listed as warnings (the next write removes them).
"""

from __future__ import annotations

import os
import re
import shlex
import sqlite3
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cbir.codes.registry import code_kind
from cbir.errors import CbirError
from cbir.index import collection
from cbir.index.segments import config_dtype
from cbir.index.store import DB_NAME, IndexStore, config_problem
from cbir.utils import sha256_file

#: How many ids of the search index are compared with their stored features.
RECONSTRUCT_SAMPLE = 256
_SEGMENT = re.compile(r"^features-(\d{8})\.npy$")
_INDEX_FILE = re.compile(r"^index-(\d{8})\.(faiss|bidx)$")


@dataclass
class CheckReport:
    """The result of :func:`check_index`; ``ok`` is False when ``errors`` is not empty."""

    index_dir: str
    generation: int | None = None
    images: int = 0
    segments: int = 0
    searchable: int | None = None
    hashed: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    #: The folders to re-index: {root: {"changed": n, "missing": n, "exists": bool}}.
    reindex: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    def lines(self) -> list[str]:
        """A human-readable summary, first line ``ok`` or ``BROKEN``."""
        head = "ok" if self.ok else "BROKEN"
        out = [
            f"{head}: {self.index_dir}: generation {self.generation}, {self.images} image(s),"
            f" {self.segments} segment(s), {self.searchable} searchable, {self.hashed} file(s) hashed"
        ]
        out += [f"  error: {e}" for e in self.errors[:50]]
        if len(self.errors) > 50:
            out.append(f"  ... and {len(self.errors) - 50} more error(s) (see --json)")
        out += [f"  warning: {w}" for w in self.warnings[:20]]
        if len(self.warnings) > 20:
            out.append(f"  ... and {len(self.warnings) - 20} more warning(s) (see --json)")
        if self.errors:
            idx = shlex.quote(self.index_dir)
            out.append(f"  `cbir repair {idx}` rebuilds what can be rebuilt")
        idx = shlex.quote(self.index_dir)
        for root, n in self.reindex.items():
            what = [f"{n[k]} file(s) {k}" for k in ("changed", "missing") if n[k]]
            if n["exists"]:
                fix = f"re-index it: `cbir index {shlex.quote(root)} --index {idx}`"
            else:  # the folder itself is gone (moved, deleted or not mounted)
                fix = (
                    "the folder is gone: index its new place with `cbir index NEW_FOLDER"
                    f" --index {idx}` (moved files keep their ids), or `cbir prune {idx}`"
                )
            out.append(f"  {' and '.join(what)} under {root}: {fix}")
        return out


def _short(ids: Any, n: int = 10) -> str:
    ids = sorted(int(i) for i in ids)
    return str(ids[:n])[:-1] + (", ...]" if len(ids) > n else "]")


def check_index(
    index_dir: str | os.PathLike[str], *, hashes: bool = True, attempts: int = 3
) -> CheckReport:
    """Check an index directory (see the module docstring); never modifies it.

    Args:
        index_dir: the index directory.
        hashes: hash every indexed file that still exists (off: only check it exists).
        attempts: a check that overlaps a commit by another process is run again, up to
            this many times (a writer may remove files of an older generation meanwhile).
    """
    report = CheckReport(index_dir=str(index_dir))
    for _ in range(max(1, attempts)):
        report = CheckReport(index_dir=str(index_dir))
        try:
            store = IndexStore.open(index_dir)
        except CbirError as e:
            report.errors.append(str(e))
            return report
        try:
            g0 = _generation(store)
            try:
                _check(store, report, hashes)
            except (sqlite3.Error, CbirError, OSError, ValueError, KeyError, TypeError) as e:
                report.errors.append(f"check stopped: {type(e).__name__}: {e}")
            if report.ok or _generation(store) == g0:
                return report
        finally:
            store.close()
    return report


def _generation(store: IndexStore) -> int | None:
    try:
        return store.generation
    except (sqlite3.Error, ValueError, TypeError, CbirError):
        return None


def _check(store: IndexStore, report: CheckReport, hashes: bool) -> None:
    conn = store.conn
    root = store.root
    # One read snapshot for everything SQL says (a concurrent commit cannot split it).
    conn.execute("BEGIN")
    try:
        quick = [r[0] for r in conn.execute("PRAGMA quick_check")]
        if quick != ["ok"]:
            report.errors.append(f"SQLite quick_check: {'; '.join(quick[:5])}")
            return
        if not _check_texts(store, report):
            return
        gen = store.get_meta("generation")
        config = store.get_meta("config")
        fa = store.get_meta("faiss")
        if not isinstance(gen, int) or gen < 0:
            report.errors.append(f"meta 'generation' is {gen!r}, not a generation number")
            return
        report.generation = gen
        if config_problem(config):
            report.errors.append(f"{root / DB_NAME}: {config_problem(config)}: {config!r}")
            return
        if store.get_meta("transform") is None:
            report.warnings.append("meta 'transform' is missing (read as the frozen backbone)")
        dim = config["feature_dim"]
        segments = [
            tuple(r) for r in conn.execute("SELECT gen, file, n FROM segments ORDER BY gen")
        ]
        rows = [
            tuple(r) for r in conn.execute("SELECT id, path, sha256, seg, row, vgen FROM images")
        ]
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='images'").fetchone()
    finally:
        conn.execute("ROLLBACK")
    report.images = len(rows)
    report.segments = len(segments)
    seg_n = _check_segments(root, segments, gen, (dim, config_dtype(config)), report)
    live = _check_rows(rows, seg_n, gen, seq[0] if seq else 0, report)
    _check_features(store, segments, rows, seg_n, report)
    _check_search_index(store, fa, gen, rows, live, report)
    _check_leftovers(root, segments, fa, report)
    _check_files(store, rows, hashes, report)
    roots = collection.roots(store)
    for what in ("changed", "missing"):
        for root, paths in collection.by_root(getattr(report, what), roots).items():
            n = report.reindex.setdefault(
                root, {"changed": 0, "missing": 0, "exists": os.path.isdir(root)}
            )
            n[what] += len(paths)
    report.reindex = dict(sorted(report.reindex.items()))


def _check_texts(store: IndexStore, report: CheckReport) -> bool:
    """Every stored text decodes (the store's text factory raises) and every JSON column
    parses: flipped bytes inside pages that quick_check cannot see."""
    db = store.root / DB_NAME
    for table, column in (("meta", "value"), ("images", "extra"), ("image_meta", "fields")):
        try:
            for _row in store.conn.execute(f"SELECT * FROM {table}"):
                pass
            bad = store.conn.execute(
                f"SELECT count(*) FROM {table} WHERE NOT json_valid({column})"
            ).fetchone()[0]
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):  # image_meta: schema 1, read as it is
                continue
            raise
        if bad:
            report.errors.append(f"{db}: {bad} row(s) of {table} hold damaged JSON in {column}")
    return report.ok


def _check_segments(
    root: Path, segments: list[tuple], gen: int, shape: tuple[int, Any], report: CheckReport
) -> dict[int, int]:
    """Segment gen -> rows it really has (only segments that load); ``shape``: the
    recorded feature dimension and segment dtype."""
    dim, dtype = shape
    seg_n: dict[int, int] = {}
    for sgen, file, n in segments:
        if file != f"features-{sgen:08d}.npy":
            report.errors.append(
                f"segment {sgen}: file name {file!r} does not match its generation"
            )
        if sgen > gen:
            report.errors.append(
                f"segment {file} is of generation {sgen}, newer than the store ({gen})"
            )
        path = root / file
        if not path.exists():
            report.errors.append(f"segment {file} is missing")
            continue
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            report.errors.append(f"segment {file} does not load ({e})")
            continue
        if arr.dtype != dtype or arr.ndim != 2 or arr.shape != (n, dim):
            report.errors.append(
                f"segment {file}: {arr.dtype} {arr.shape}, the metadata says {dtype} ({n}, {dim})"
            )
            if arr.ndim == 2 and arr.shape[1] == dim:
                seg_n[sgen] = arr.shape[0]
            continue
        seg_n[sgen] = n
    return seg_n


def _check_rows(
    rows: list[tuple], seg_n: dict[int, int], gen: int, seq: int, report: CheckReport
) -> set[int]:
    live: set[int] = set()
    slots: Counter[tuple[int, int]] = Counter()
    bad_slot, newer, bad_sha = [], [], []
    for id_, _path, sha, seg, row, vgen in rows:
        live.add(int(id_))
        slots[(seg, row)] += 1
        if seg not in seg_n or not 0 <= row < seg_n[seg]:
            bad_slot.append(id_)
        if vgen > gen or seg > gen or vgen > seg:
            newer.append(id_)
        if not re.fullmatch(r"[0-9a-f]{64}", sha or ""):
            bad_sha.append(id_)
    if bad_slot:
        report.errors.append(
            f"{len(bad_slot)} image row(s) point at no stored feature row: ids {_short(bad_slot)}"
        )
    if newer:
        report.errors.append(
            f"{len(newer)} image row(s) newer than the store's generation {gen}: ids {_short(newer)}"
        )
    if bad_sha:
        report.errors.append(f"{len(bad_sha)} image row(s) without a sha256: ids {_short(bad_sha)}")
    shared = [k for k, c in slots.items() if c > 1]
    if shared:
        report.errors.append(
            f"{len(shared)} feature row(s) shared by several images, e.g. segment/row {shared[:3]}"
        )
    if live and max(live) > seq:
        report.errors.append(f"id {max(live)} is above the id counter {seq} (ids could be reused)")
    return live


def _check_features(
    store: IndexStore,
    segments: list[tuple],
    rows: list[tuple],
    seg_n: dict[int, int],
    report: CheckReport,
) -> None:
    used: dict[int, list[int]] = {}
    for _id, _p, _s, seg, row, _v in rows:
        if seg in seg_n and 0 <= row < seg_n[seg]:
            used.setdefault(seg, []).append(row)
    for sgen, file, _n in segments:
        if sgen not in used:
            continue
        arr = np.load(store.root / file, mmap_mode="r", allow_pickle=False)
        idx = np.sort(np.asarray(used[sgen], np.int64))
        for start in range(0, len(idx), 65536):
            block = np.asarray(arr[idx[start : start + 65536]])
            if not np.isfinite(block).all():
                report.errors.append(f"segment {file} holds non-finite features")
                break


def _check_search_index(
    store: IndexStore, fa: Any, gen: int, rows: list[tuple], live: set[int], report: CheckReport
) -> None:
    from cbir.index import vector_index

    try:
        transform = vector_index.current_transform(store)
    except CbirError as e:
        report.errors.append(f"the index's transform cannot be loaded ({e})")
        return
    if fa is None:
        if live:
            report.warnings.append(
                "no search index file yet (readers build it in memory; the next write saves it)"
            )
    elif not isinstance(fa, dict) or not isinstance(fa.get("gen"), int) or not fa.get("file"):
        report.errors.append(f"meta 'faiss' is malformed: {fa!r}")
    elif fa["gen"] > gen:
        report.errors.append(
            f"search index file {fa['file']} is of generation {fa['gen']}, newer than the store ({gen})"
        )
    else:
        _check_index_file(store, fa, gen, rows, live, transform, report)
    # What readers search: the file brought up to date, or a rebuild from the features.
    try:
        index, _transform, rgen = vector_index.load(store)
    except (CbirError, RuntimeError, OSError, ValueError) as e:
        report.errors.append(f"readers cannot load the search index ({type(e).__name__}: {e})")
        return
    if rgen != gen:
        return  # a commit happened meanwhile: check_index runs again
    ids = code_kind(transform).ids(index)
    report.searchable = int(index.ntotal)
    _compare_ids("the search index readers use", ids, live, report)
    if int(index.ntotal) != len(live):
        report.errors.append(
            f"the search index holds {index.ntotal} vectors for {len(live)} image rows"
        )


def _compare_ids(what: str, ids: np.ndarray, live: set[int], report: CheckReport) -> None:
    counts = Counter(int(i) for i in ids)
    dup = [i for i, c in counts.items() if c > 1]
    extra = set(counts) - live
    lacking = live - set(counts)
    if dup:
        report.errors.append(f"{what} holds {len(dup)} id(s) more than once: {_short(dup)}")
    if extra:
        report.errors.append(
            f"{what} holds {len(extra)} id(s) with no metadata row: {_short(extra)}"
        )
    if lacking:
        report.errors.append(f"{what} lacks {len(lacking)} image row(s): ids {_short(lacking)}")


def _check_index_file(
    store: IndexStore,
    fa: dict,
    gen: int,
    rows: list[tuple],
    live: set[int],
    transform: Any,
    report: CheckReport,
) -> None:
    from cbir.heads.transform import spec_digest

    path = store.root / fa["file"]
    if not path.exists():
        report.warnings.append(
            f"search index file {fa['file']} is missing (derived: it is rebuilt from the features)"
        )
        return
    try:
        index = code_kind(transform).read(path)
    except Exception as e:  # faiss raises RuntimeError; a damaged file may raise anything
        report.warnings.append(
            f"search index file {fa['file']} does not load ({type(e).__name__}); it is rebuilt"
        )
        return
    if (
        fa.get("spec") != spec_digest(transform.spec())
        or fa.get("index_type") != store.config["index_type"]
    ):
        report.warnings.append(
            f"search index file {fa['file']} was built with other settings; it is rebuilt"
        )
        return
    ids = code_kind(transform).ids(index)
    name = f"search index file {fa['file']}"
    if fa["gen"] == gen:
        _compare_ids(name, ids, live, report)
    else:
        report.warnings.append(
            f"{name} is {gen - fa['gen']} commit(s) behind (brought up to date by readers and the next write)"
        )
        before = {int(r[0]) for r in rows if r[5] <= fa["gen"]}
        lacking = before - {int(i) for i in ids}
        if lacking:
            report.errors.append(
                f"{name} lacks {len(lacking)} row(s) committed before it was written: ids {_short(lacking)}"
            )
    if fa["gen"] == gen:  # float vectors in an IDMap2 index (others cannot reconstruct)
        _check_vectors(store, index, ids, transform, name, report)


def _check_vectors(
    store: IndexStore, index: Any, ids: np.ndarray, transform: Any, name: str, report: CheckReport
) -> None:
    """A sample of stored vectors equal the transformed features of their ids (where faiss can say)."""
    if not hasattr(index, "id_map") or not len(ids):
        return  # only IDMap2 indexes reconstruct by id
    sample = np.unique(ids)[:RECONSTRUCT_SAMPLE]
    try:
        got = np.stack([index.reconstruct(int(i)) for i in sample])
        want = transform(store.features(sample.tolist()))
    except (RuntimeError, CbirError):
        return
    bad = sample[~np.all(np.abs(got - want) <= 1e-4 + 1e-3 * np.abs(want), axis=1)]
    if len(bad):
        report.errors.append(f"{name}: {len(bad)} id(s) hold another image's vector: {_short(bad)}")


def _check_leftovers(root: Path, segments: list[tuple], fa: Any, report: CheckReport) -> None:
    keep = {s[1] for s in segments}
    if isinstance(fa, dict):
        keep |= {fa.get("file"), fa.get("previous")}
    left = []
    for p in sorted(root.iterdir()):
        n = p.name
        if n in keep:
            continue
        if (
            _SEGMENT.match(n)
            or _INDEX_FILE.match(n)
            or n.startswith((".features-", ".index-", ".meta"))
        ):
            left.append(n)
    if left:
        report.warnings.append(
            f"{len(left)} file(s) left by an interrupted write (removed by the next write): {left[:5]}"
        )


def _check_files(store: IndexStore, rows: list[tuple], hashes: bool, report: CheckReport) -> None:
    uploads = os.path.join(os.path.abspath(store.root), "uploads") + os.sep
    for _id, path, sha, *_ in rows:
        owned = path.startswith(uploads)
        try:
            if not os.path.isfile(path):
                raise FileNotFoundError(path)
            if hashes:
                actual = sha256_file(path)
                report.hashed += 1
                if actual != sha:
                    if owned:
                        report.errors.append(
                            f"uploaded file {path} does not match its recorded sha256"
                        )
                    else:
                        report.changed.append(path)
        except OSError:
            if owned:
                report.errors.append(f"uploaded file {path} is missing")
            else:
                report.missing.append(path)
