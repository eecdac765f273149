"""Issue 16's attacks on the service and the index, each a row of the reliability table.

Each attack is run as an outsider or a careless user would run it, against a real index
of real photos: HTTP requests to the app (configured as ``cbir serve`` configures it for a
loopback bind), a real ``cbir serve`` process where memory or start-up is measured, and the
``cbir`` command line for the index attacks. A trial fails when the attack gets through
(a write without the key, a file served after it changed, a foreign Host answered, a
traceback, an unbounded amount of memory or disk).
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cbir_testing.reliability.corpus import encode, variant, write_corpus
from cbir_testing.reliability.report import Outcome, Tally

Log = Callable[[str], None]
KEY = "attack-key-0123456789abcdef"
AUTH = {"X-API-Key": KEY}
MiB = 1 << 20
#: ``--where`` filters that once crashed (issue 16 item 3): huge integers, deep nesting.
WHERE_ATTACKS = (
    "id = 9223372036854775808",
    "id > -9223372036854775809",
    "size < 1" + "0" * 400,
    "not " * 20 + "id = 1",
    "(" * 330 + "id = 1" + ")" * 330,
)
FOREIGN_HOSTS = (
    "evil.example",
    "localhost.evil.example",
    "127.0.0.1.nip.io:8000",
    "",
    "[::1",
)


def transparent_bitmap_png(side: int = 8000) -> bytes:
    """A valid PNG of ``side x side`` 1-bit pixels, all the transparent colour (tRNS):
    7.9 KB for 8000 x 8000."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte, then the bits
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
        + chunk(b"tRNS", struct.pack(">H", 0))
        + chunk(b"IDAT", zlib.compress(row * side, 9))
        + chunk(b"IEND", b"")
    )


def noise_png(side: int, seed: int) -> bytes:
    """A PNG of uniform noise: incompressible, about ``3 * side**2`` bytes."""
    import numpy as np
    from PIL import Image

    a = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return encode(Image.fromarray(a), "PNG")


def proc_bytes(pid: int, field: str) -> int:
    """A ``VmRSS``-style field of ``/proc/PID/status``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def peak_rss_growth(url: str, pid: int, body: bytes, n: int = 8) -> tuple[int, list[int]]:
    """Send ``n`` uploads of ``body`` to ``POST /search`` at once; the growth of the
    server's peak RSS over its RSS before (bytes), and the status codes."""
    import httpx

    before = proc_bytes(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    statuses: list[int] = []

    def send() -> None:
        with httpx.Client(base_url=url, timeout=300) as c:
            r = c.post("/search", files={"file": ("b.png", body)}, data={"k": "3"})
            statuses.append(r.status_code)

    threads = [threading.Thread(target=send) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return proc_bytes(pid, "VmHWM") - before, statuses


def cli(*argv: str, timeout: float = 300) -> tuple[int, str]:
    """Run ``cbir ARGV`` in a subprocess: (exit code, stderr); -9 if it ran past ``timeout``."""
    try:
        p = subprocess.run(
            [sys.executable, "-m", "cbir.cli", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return -9, "timed out (still running)"
    return p.returncode, p.stderr


def _one_line_error(out: Outcome, what: str, code: int, err: str) -> None:
    if code in (0, -9) or "Traceback" in err or err.count("\n") != 1:
        out.fail(f"{what}: exit {code}, stderr {err[-200:]!r}")


class AttackLab:
    """A small real index (8 photos) to attack, and the service over it."""

    def __init__(self, workdir: Path) -> None:
        from cbir.pipeline import index_folder

        self.work = Path(workdir)
        self.photos = self.work / "photos"
        write_corpus(self.photos, 8, start=500)
        self.index = self.work / "index"
        index_folder(self.photos, self.index, size=64, workers=1, progress=False)
        self.query = next(iter(sorted(self.photos.glob("*.jpg"))))

    def copy(self, name: str) -> tuple[Path, Path]:
        """A private (photos, index) pair whose rows point at the copied photos."""
        from cbir.pipeline import index_folder

        photos = self.work / name / "photos"
        shutil.copytree(self.photos, photos)
        index = self.work / name / "index"
        index_folder(photos, index, size=64, workers=1, progress=False)
        return photos, index

    @contextlib.contextmanager
    def client(self, index: Path | None = None, key: str | None = None, **kw: Any) -> Iterator[Any]:
        """The app as ``cbir serve`` on 127.0.0.1 makes it, and a client on that address."""
        from fastapi.testclient import TestClient

        from cbir.service.app import create_app
        from cbir.service.guard import AllowedHosts

        app = create_app(
            index or self.index, api_key=key, allowed_hosts=AllowedHosts.for_bind("127.0.0.1"), **kw
        )
        with TestClient(app, base_url="http://127.0.0.1:8000", raise_server_exceptions=False) as c:
            yield c

    # ------------------------------------------------------------ the attacks
    def feedback_without_key(self) -> list[Outcome]:
        """POST /feedback on a read-only server, and on a keyed one without or with a
        wrong key: refused (403, 401, 401), no row, no saved query."""
        _, index = self.copy("feedback-nokey")
        body = {"query": "id:1", "result_id": 2, "relevant": True}
        outs = []
        for key, headers, want in (
            (None, {}, 403),
            (KEY, {}, 401),
            (KEY, {"X-API-Key": "x" * 26}, 401),
        ):
            out = Outcome()
            with self.client(index, key) as c:
                q = c.post("/search", files={"file": ("q.png", encode(variant(900), "PNG"))})
                r = c.post("/feedback", json=body, headers=headers)
                r2 = c.post("/feedback", json={**body, "query": q.json()["query"]}, headers=headers)
            if (r.status_code, r2.status_code) != (want, want):
                out.fail(f"feedback answered {r.status_code}/{r2.status_code}, not {want}")
            if _feedback_rows(index) or (index / "queries").exists():
                out.fail("feedback written without the key")
            outs.append(out)
        return outs

    def feedback_flood(self) -> list[Outcome]:
        """60 judgements of one query, 8 uploads of 48 KB kept by feedback: at most 20
        rows per query (then 429), at most 200 KB of saved queries (then 507)."""
        _, index = self.copy("feedback-flood")
        rows, saved = Outcome(), Outcome()
        with self.client(index, KEY, max_feedback_per_query=20, max_query_bytes=200_000) as c:
            codes = [
                c.post(
                    "/feedback",
                    json={"query": "id:1", "result_id": 1 + i % 7, "relevant": True},
                    headers=AUTH,
                ).status_code
                for i in range(60)
            ]
            if codes != [201] * 20 + [429] * 40:
                rows.fail(f"60 posts answered {sorted(set(codes))}, {codes.count(201)} stored")
            for seed in range(8):
                q = c.post("/search", files={"file": ("q.png", noise_png(128, seed))}).json()
                r = c.post(
                    "/feedback",
                    json={"query": q["query"], "result_id": 2, "relevant": True},
                    headers=AUTH,
                )
                if r.status_code not in (201, 507):
                    saved.fail(f"feedback on an upload answered {r.status_code}")
        used = sum(p.stat().st_size for p in (index / "queries").iterdir())
        if used > 200_000 or used == 0:
            saved.fail(f"{used} bytes of saved queries (cap 200000)")
        return [rows, saved]

    def memory(self, log: Log) -> list[Outcome]:
        """8 parallel 7.9 KB PNGs of 8000x8000 pixels to ``POST /search`` of a real
        ``cbir serve``: its peak RSS grows by less than the stated bound."""
        from cbir.service.service import DEFAULT_DECODE_SLOTS

        out = Outcome()
        if not Path("/proc/self/clear_refs").exists():
            out.note = "not measured: no /proc"
            return [out]
        bound = DEFAULT_DECODE_SLOTS * 80 * MiB + 100 * MiB
        from cbir_testing.loadgen import ServerProcess

        with ServerProcess(self.index) as srv:
            url = srv.url
            import httpx

            with httpx.Client(base_url=url, timeout=300) as c:
                c.post("/search", files={"file": ("w.jpg", self.query.read_bytes())})
            growth, statuses = peak_rss_growth(url, srv.pid, transparent_bitmap_png())
        log(f"  8 PNG bombs: peak RSS +{growth / MiB:.0f} MiB (bound {bound / MiB:.0f} MiB)")
        out.note = f"peak RSS +{growth // MiB} MiB (bound {bound // MiB})"
        if growth >= bound:
            out.fail(f"peak RSS grew by {growth / MiB:.0f} MiB (bound {bound / MiB:.0f})")
        if set(statuses) - {200, 413}:
            out.fail(f"answers {statuses}")
        return [out]

    def key_files(self) -> list[Outcome]:
        """A key file with a UTF-8 BOM (and spaces): writes with the key work. A non-ASCII
        key: `cbir serve` refuses to start, in one line."""
        from cbir.cli.serve import read_api_key

        bom, other = Outcome(), Outcome()
        f = self.work / "bom.key"
        f.write_bytes(b"\xef\xbb\xbf " + KEY.encode() + b" \r\n")
        f.chmod(0o600)
        _, index = self.copy("key-bom")
        with self.client(index, read_api_key(str(f))) as c:
            r = c.post(
                "/images", files={"file": ("n.png", encode(variant(901), "PNG"))}, headers=AUTH
            )
        if r.status_code != 201:
            bom.fail(f"a write with the key answered {r.status_code}")
        g = self.work / "utf8.key"
        g.write_text("clé-secrète-0123456789abc", encoding="utf-8")
        g.chmod(0o600)
        code, err = cli(
            "serve", str(self.index), "--port", "0", "--api-key-file", str(g), timeout=60
        )
        _one_line_error(other, "serve with a non-ASCII key", code, err)
        return [bom, other]

    def swapped_files(self) -> list[Outcome]:
        """After indexing: a photo replaced by a symlink to a file with PNG magic, one
        overwritten with other content, one deleted. /images and /thumbs answer 409, 409
        and 404; the swapped-in bytes are never served."""
        from cbir.index.store import IndexStore

        photos, index = self.copy("swapped")
        store = IndexStore.open(index)
        rows = sorted(store.rows(), key=lambda r: r["id"])[:3]
        store.close()
        secret = self.work / "secret.png"
        secret.write_bytes(b"\x89PNG\r\n\x1a\n" + b"SECRET-BYTES " * 64)
        p0, p1, p2 = (Path(r["path"]) for r in rows)
        p0.unlink()
        p0.symlink_to(secret)
        p1.write_bytes(encode(variant(902), "PNG"))
        p2.unlink()
        outs = []
        with self.client(index) as c:
            for row, want in zip(rows, (409, 409, 404), strict=True):
                out = Outcome()
                for url in (f"/images/{row['id']}", f"/thumbs/{row['id']}"):
                    r = c.get(url)
                    if r.status_code != want or b"SECRET" in r.content:
                        out.fail(f"{url} answered {r.status_code}, not {want}")
                outs.append(out)
        return outs

    def foreign_hosts(self) -> list[Outcome]:
        """Requests with a Host this server was not bound to (DNS rebinding), to a read, the
        fast search path and a write: 400; the bound names still work."""
        outs = []
        with self.client(key=KEY) as c:
            for host in FOREIGN_HOSTS:
                out = Outcome()
                for method, url in (
                    ("GET", "/health"),
                    ("GET", "/search?id=1&k=2"),
                    ("DELETE", "/images/1"),
                ):
                    r = c.request(method, url, headers={"host": host, **AUTH})
                    if r.status_code != 400:
                        out.fail(f"Host {host!r}: {method} {url} answered {r.status_code}")
                outs.append(out)
            ok = Outcome()
            for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000"):
                if c.get("/health", headers={"host": host}).status_code != 200:
                    ok.fail(f"Host {host!r} refused")
            outs.append(ok)
        return outs

    def server_paths(self) -> list[Outcome]:
        """Search by id, by upload and an add: no answer names a server path."""
        _, index = self.copy("paths")
        roots = (str(self.work), str(index.absolute()))
        out = Outcome()
        with self.client(index, KEY) as c:
            answers = [
                c.get("/search", params={"id": 1, "k": 8}).text,
                c.post("/search", files={"file": ("q.jpg", self.query.read_bytes())}).text,
                c.post(
                    "/images", files={"file": ("n.png", encode(variant(903), "PNG"))}, headers=AUTH
                ).text,
            ]
        for text in answers:
            if any(r in text for r in roots) or '"path":"/' in text:
                out.fail(f"a server path in {text[:200]}")
        return [out]

    def url_k(self) -> list[Outcome]:
        """``POST /search?k=2`` with an upload: 2 results."""
        out = Outcome()
        with self.client() as c:
            r = c.post("/search?k=2", files={"file": ("q.jpg", self.query.read_bytes())})
        if r.status_code != 200 or len(r.json()["results"]) != 2:
            out.fail(f"answered {r.status_code} with {len(r.json().get('results', []))} results")
        return [out]

    def where_filters(self) -> list[Outcome]:
        """Each ``--where`` attack through ``cbir search`` (one line, exit 1) and HTTP (400)."""
        outs = []
        with self.client() as c:
            for text in WHERE_ATTACKS:
                out = Outcome()
                code, err = cli("search", str(self.index), str(self.query), "--where", text)
                _one_line_error(out, "cbir search --where", code, err)
                r = c.get("/search", params={"id": 1, "k": 3, "where": text})
                if r.status_code != 400:
                    out.fail(f"HTTP answered {r.status_code}")
                outs.append(out)
        return outs

    def damaged_store(self) -> list[Outcome]:
        """``meta.sqlite`` with bytes flipped in its pages (the config's JSON, a path's
        UTF-8) or a config without its backbone: search, info and check each exit
        non-zero in one line."""
        outs = []
        for name in ("config-json", "path-utf8", "no-backbone"):
            out = Outcome()
            dst = self.work / "damaged" / name
            shutil.copytree(self.index, dst)
            db = dst / "meta.sqlite"
            with sqlite3.connect(db) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                if name == "no-backbone":
                    conn.execute(
                        "UPDATE meta SET value = json_remove(value, '$.backbone')"
                        " WHERE key = 'config'"
                    )
            conn.close()
            if name != "no-backbone":
                needle, at = (
                    (b'"feature_dim"', 0)
                    if name == "config-json"
                    else (str(self.photos).encode(), 2)
                )
                data = bytearray(db.read_bytes())
                i = data.find(needle, 4096)
                while i >= 0:
                    data[i + at] ^= 0x01 if name == "config-json" else 0x80
                    i = data.find(needle, i + 1)
                db.write_bytes(bytes(data))
            runs = [("search", str(dst), str(self.query)), ("check", str(dst))]
            if name != "path-utf8":
                runs.append(("info", str(dst)))
            for argv in runs:
                code, err = cli(*argv)
                if argv[0] == "check":
                    if code == 0 or "Traceback" in err:
                        out.fail(f"cbir check: exit {code}")
                else:
                    _one_line_error(out, f"cbir {argv[0]}", code, err)
            outs.append(out)
        return outs

    def bad_index_type(self) -> list[Outcome]:
        """``--index-type IVF1024,PQ32`` on 8 images: refused in one line and nothing
        written; an index into a folder whose parent does not exist: refused, and no
        parent is created."""
        untrainable, parent = Outcome(), Outcome()
        idx = self.work / "ivf.idx"
        code, err = cli(
            "index", str(self.photos), "--index", str(idx), "--index-type", "IVF1024,PQ32"
        )
        _one_line_error(untrainable, "cbir index --index-type IVF1024,PQ32", code, err)
        if (idx / "meta.sqlite").exists():
            untrainable.fail("an index was written")
        missing = self.work / "no-such-parent"
        code, err = cli("index", str(self.photos), "--index", str(missing / "a" / "x.idx"))
        _one_line_error(parent, "cbir index into a missing parent", code, err)
        if missing.exists():
            parent.fail(f"{missing} was created")
        return [untrainable, parent]

    def lost_features(self) -> list[Outcome]:
        """A ``features-*.npy`` segment deleted or truncated (issue 16 item 5): a re-run of
        ``cbir index`` on the same folder, or ``cbir repair``, must re-embed the lost rows
        (same ids) so that ``cbir check`` passes; success over a broken index fails."""
        outs = []
        for how in ("delete", "truncate"):
            for fix in ("index", "repair"):
                out = Outcome()
                photos, index = self.copy(f"lost-{how}-{fix}")
                ids_before = sorted(r[0] for r in _ids(index))
                seg = sorted(index.glob("features-*.npy"))[0]
                if how == "delete":
                    seg.unlink()
                else:
                    seg.write_bytes(seg.read_bytes()[: seg.stat().st_size // 2])
                if fix == "index":
                    code, err = cli("index", str(photos), "--index", str(index))
                else:
                    code, err = cli("repair", str(index))
                if code != 0 or "Traceback" in err:
                    out.fail(f"cbir {fix} after a {how}d segment: exit {code}, {err[-200:]!r}")
                code, err = cli("check", str(index), "--no-hashes")
                if code != 0:
                    out.fail(f"cbir check after cbir {fix}: exit {code}, {err[-200:]!r}")
                if sorted(r[0] for r in _ids(index)) != ids_before:
                    out.fail(f"ids changed by cbir {fix}")
                outs.append(out)
        return outs


def _ids(index: Path) -> list[Any]:
    from cbir.index.store import IndexStore

    store = IndexStore.open(index)
    try:
        return list(store.conn.execute("SELECT id FROM images"))
    finally:
        store.close()


def _feedback_rows(index: Path) -> list[Any]:
    from cbir.index.store import IndexStore

    store = IndexStore.open(index)
    try:
        return store.feedback()
    finally:
        store.close()


def attack_tallies(workdir: Path, log: Log) -> list[Tally]:
    """Every attack of issue 16, one table row each."""
    lab = AttackLab(Path(workdir) / "attacks")
    plan: list[tuple[str, Callable[[], list[Outcome]]]] = [
        ("POST /feedback without the key (read-only, keyed, wrong key)", lab.feedback_without_key),
        ("feedback flood: rows per query, bytes of saved queries", lab.feedback_flood),
        ("8 parallel 7.9 KB PNGs of 8000x8000 pixels (peak RSS)", lambda: lab.memory(log)),
        ("API key file with a BOM; a non-ASCII key", lab.key_files),
        ("image swapped after indexing (symlink, overwritten, deleted)", lab.swapped_files),
        ("foreign Host headers (DNS rebinding)", lab.foreign_hosts),
        ("server paths in API answers", lab.server_paths),
        ("POST /search?k=2 (k in the URL)", lab.url_k),
        ("--where attacks (huge integers, deep nesting): CLI and HTTP", lab.where_filters),
        ("damaged meta.sqlite (flipped bytes, no backbone)", lab.damaged_store),
        ("untrainable --index-type; index into a missing parent", lab.bad_index_type),
        ("features segment deleted or truncated: cbir index / cbir repair", lab.lost_features),
    ]
    out = []
    for name, run in plan:
        t = Tally(name, measures_loss=False)
        try:
            outcomes = run()
        except Exception as e:  # an attack that breaks the harness is a failed trial
            outcomes = [Outcome().fail(f"{type(e).__name__}: {str(e)[:200]}")]
        for o in outcomes:
            t.add(o)
        log(f"{name}: {t.trials} trials, {t.failures} failures")
        out.append(t)
    return out


__all__ = ["AttackLab", "attack_tallies", "peak_rss_growth", "transparent_bitmap_png"]
