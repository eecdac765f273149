"""Image metadata for text-based retrieval: sidecar files, EXIF, SQLite FTS5.

Sidecar formats (read from every folder under the indexed folder):

- ``metadata.csv``: a header row naming the columns; one column names the image by its
  path relative to the CSV's folder (``path``, ``file``, ``filename`` or ``image``), every
  other column is a field (``title,artist,year,style,...``).
- ``metadata.json``: an object keyed by relative path (``{"a.jpg": {"year": 1889}}``) or a
  list of objects each with a ``path`` (or ``file``/``filename``/``image``) key.
- per image: ``IMG.jpg.json`` or ``IMG.json`` next to ``IMG.jpg``: one object of fields.

A more specific source wins field by field: per-image JSON over ``metadata.json`` over
``metadata.csv``, and a deeper folder's file over a shallower one's. Field names are
lower-cased with anything but letters, digits and ``_`` turned into ``_`` ("Date Taken"
-> ``date_taken``). Values that look like integers or decimals are stored as numbers, so
``year < 1900`` compares numerically; lists are joined with ", ".

EXIF (where the file has it) gives ``date`` (ISO ``YYYY-MM-DD HH:MM:SS``), ``year``,
``camera``, ``artist``, ``description``, ``copyright``, ``title``, ``keywords``; sidecar
fields override EXIF ones of the same name.

Tables (in the index's ``meta.sqlite``, written in the index's own commit transactions)::

    image_meta(image_id, sidecar, exif, fields)   JSON objects; fields = exif | sidecar
    meta_fields(name)                             every field name seen (for --where)
    image_text(body)                              FTS5, rowid = image id: tags + values

The FTS5 index ranks text queries by BM25 (Robertson & Zaragoza, "The Probabilistic
Relevance Framework: BM25 and Beyond", 2009), SQLite's ``bm25()``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import sqlite3
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cbir.errors import CbirError

SIDECAR_CSV = "metadata.csv"
SIDECAR_JSON = "metadata.json"
#: Column / key that names the image in a sidecar CSV or JSON list, first match wins.
KEY_COLUMNS = ("path", "file", "filename", "image")
MAX_VALUE_CHARS = 4096
MAX_SIDECAR_BYTES = 512 * 1024 * 1024

METADATA_DDL = """
CREATE TABLE IF NOT EXISTS image_meta (
    image_id INTEGER PRIMARY KEY,
    sidecar TEXT NOT NULL DEFAULT '{}',
    exif TEXT NOT NULL DEFAULT '{}',
    fields TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS meta_fields (name TEXT PRIMARY KEY);
CREATE VIRTUAL TABLE IF NOT EXISTS image_text
    USING fts5(body, tokenize = 'porter unicode61 remove_diacritics 2');
CREATE TRIGGER IF NOT EXISTS images_meta_gone AFTER DELETE ON images BEGIN
    DELETE FROM image_meta WHERE image_id = old.id;
    DELETE FROM image_text WHERE rowid = old.id;
END;
"""

_INT = re.compile(r"^[+-]?(0|[1-9]\d{0,17})$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")


# ------------------------------------------------------------------- values
def normalize_field(name: str) -> str:
    """A field name as stored: lower case, ``[a-z0-9_]``, not starting with a digit."""
    out = re.sub(r"[^a-z0-9_]+", "_", str(name).strip().lower()).strip("_")
    if out and out[0].isdigit():
        out = "f_" + out
    return out


def coerce(value: Any) -> Any:
    """A sidecar value as stored: numbers for numeric text, joined lists, trimmed text."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value if value == value else None  # NaN: no value
    if isinstance(value, (list, tuple)):
        parts = [str(coerce(v)) for v in value if coerce(v) not in (None, "")]
        return ", ".join(parts)[:MAX_VALUE_CHARS] or None
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)[:MAX_VALUE_CHARS]
    s = str(value).replace("\x00", "").strip()
    if not s:
        return None
    if _INT.match(s):
        return int(s)
    if _FLOAT.match(s) and "." in s or re.match(r"^[+-]?\d+[eE][+-]?\d+$", s):
        with contextlib.suppress(ValueError):
            return float(s)
    return s[:MAX_VALUE_CHARS]


def clean_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """Normalised names and coerced values; empty values dropped."""
    out: dict[str, Any] = {}
    for k, v in raw.items():
        name = normalize_field(k)
        val = coerce(v)
        if name and val is not None:
            out[name] = val
    return out


# ----------------------------------------------------------------- sidecars
def _key_of(row: dict[str, Any], source: Path) -> tuple[str, str]:
    lower = {str(k).strip().lower(): k for k in row}
    for col in KEY_COLUMNS:
        if col in lower:
            return lower[col], str(row[lower[col]] or "").strip()
    raise CbirError(
        f"{source}: no column naming the image; name it one of {', '.join(KEY_COLUMNS)}"
        " (the image's path relative to this file's folder)"
    )


def _read_text(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            raise CbirError(f"{path}: metadata file larger than {MAX_SIDECAR_BYTES} bytes")
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CbirError(
            f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8"
        ) from None
    except OSError as e:
        raise CbirError(f"{path}: cannot read the metadata file ({e.strerror or e})") from None


def read_csv_sidecar(path: Path) -> dict[str, dict[str, Any]]:
    """``{absolute image path: fields}`` from a ``metadata.csv``."""
    text = _read_text(path)
    try:
        rows = list(csv.DictReader(io.StringIO(text)))
    except csv.Error as e:
        raise CbirError(f"{path}: not a readable CSV file ({e})") from None
    out: dict[str, dict[str, Any]] = {}
    for n, row in enumerate(rows, start=2):
        if None in row:
            raise CbirError(f"{path}: line {n} has more values than the header has columns")
        col, rel = _key_of(row, path)
        if not rel:
            continue
        fields = clean_fields({k: v for k, v in row.items() if k != col})
        out[os.path.normpath(path.parent / rel)] = fields
    return out


def _read_json(path: Path) -> Any:
    """A JSON metadata file's content; invalid JSON is a clear error naming the file."""
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise CbirError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}); fix or remove it"
        ) from None


def read_json_sidecar(path: Path) -> dict[str, dict[str, Any]]:
    """``{absolute image path: fields}`` from a ``metadata.json`` (object or list)."""
    data = _read_json(path)
    items: Iterable[tuple[str, Any]]
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        pairs = []
        for obj in data:
            if not isinstance(obj, dict):
                raise CbirError(f"{path}: a list entry is not an object of fields")
            col, rel = _key_of(obj, path)
            pairs.append((rel, {k: v for k, v in obj.items() if k != col}))
        items = pairs
    else:
        raise CbirError(f"{path}: expected an object keyed by image path or a list of objects")
    out: dict[str, dict[str, Any]] = {}
    for rel, fields in items:
        if not isinstance(fields, dict):
            raise CbirError(f"{path}: the entry for {rel!r} is not an object of fields")
        if rel:
            out[os.path.normpath(path.parent / str(rel))] = clean_fields(fields)
    return out


def read_image_json(path: Path) -> dict[str, Any]:
    """Fields from a per-image ``IMG.jpg.json`` / ``IMG.json``."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise CbirError(f"{path}: expected one JSON object of fields for its image")
    return clean_fields(data)


def read_sidecars(
    root: str | os.PathLike[str], images: Iterable[Path]
) -> dict[str, dict[str, Any]]:
    """Sidecar fields of ``images`` (absolute paths under ``root``), by path string.

    Images without any sidecar entry are absent from the result.
    """
    root = Path(root)
    if root.is_file():
        return {}
    tables: list[tuple[int, int, dict[str, dict[str, Any]]]] = []
    jsons: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        depth = Path(dirpath).relative_to(root).parts.__len__()
        names = set(filenames)
        if SIDECAR_CSV in names:
            tables.append((depth, 0, read_csv_sidecar(Path(dirpath) / SIDECAR_CSV)))
        if SIDECAR_JSON in names:
            tables.append((depth, 1, read_json_sidecar(Path(dirpath) / SIDECAR_JSON)))
        jsons.update(
            os.path.join(dirpath, n) for n in filenames if n.endswith(".json") and n != SIDECAR_JSON
        )
    tables.sort(key=lambda t: (t[1], t[0]))  # csv before json, shallow before deep
    wanted = [str(p) for p in images]
    out: dict[str, dict[str, Any]] = {}
    for _, _, table in tables:
        for path in wanted:
            fields = table.get(path)
            if fields:
                out.setdefault(path, {}).update(fields)
    if jsons:
        for path in wanted:
            for cand in (os.path.splitext(path)[0] + ".json", path + ".json"):  # exact name last
                if cand in jsons:
                    out.setdefault(path, {}).update(read_image_json(Path(cand)))
    return {p: f for p, f in out.items() if f}


# --------------------------------------------------------------------- EXIF
_BASE_TAGS = {270: "description", 315: "artist", 33432: "copyright"}
_XP_TAGS = {0x9C9B: "title", 0x9C9C: "comment", 0x9C9D: "artist", 0x9C9E: "keywords"}
_EXIF_IFD = 0x8769


def _exif_text(v: Any) -> str | None:
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if not isinstance(v, str):
        return None
    s = v.replace("\x00", "").strip()
    return s[:MAX_VALUE_CHARS] or None


def _exif_date(v: Any) -> str | None:
    s = _exif_text(v)
    m = re.match(r"^(\d{4})[:-](\d{2})[:-](\d{2})(?:[ T](\d{2}):(\d{2}):(\d{2}))?", s or "")
    if not m or m.group(1) == "0000":
        return None
    date = f"{m.group(1)}-{m.group(2)}-{m.group(3)}"
    return date + (f" {m.group(4)}:{m.group(5)}:{m.group(6)}" if m.group(4) else "")


def exif_fields(img: Any) -> dict[str, Any]:
    """Searchable fields from a PIL image's EXIF (empty when it has none or it is damaged)."""
    try:
        if img.format == "PNG":  # getexif() would decode the whole PNG to find a late eXIf
            from PIL import Image

            exif = Image.Exif()
            if img.info.get("exif"):
                exif.load(img.info["exif"])
        else:
            exif = img.getexif()
    except Exception:  # damaged EXIF never fails indexing
        return {}
    if not exif:
        return {}
    out: dict[str, Any] = {}
    try:
        sub = exif.get_ifd(_EXIF_IFD)
    except Exception:
        sub = {}
    for tag, name in _BASE_TAGS.items():
        if (s := _exif_text(exif.get(tag))) is not None:
            out[name] = s
    for tag, name in _XP_TAGS.items():  # Windows XP* tags: UTF-16LE bytes
        v = exif.get(tag)
        if isinstance(v, (bytes, tuple)) and name not in out:
            raw = bytes(v)
            if (s := _exif_text(raw.decode("utf-16-le", "replace"))) is not None:
                out[name] = s
    make, model = _exif_text(exif.get(271)), _exif_text(exif.get(272))
    if make or model:
        out["camera"] = (
            model
            if make and model and model.lower().startswith(make.lower())
            else (" ".join(x for x in (make, model) if x))
        )
    date = _exif_date(sub.get(36867)) or _exif_date(sub.get(36868)) or _exif_date(exif.get(306))
    if date:
        out["date"] = date
        out["year"] = int(date[:4])
    return out


def exif_from_bytes(data: bytes) -> dict[str, Any]:
    """EXIF fields of encoded image bytes (only the header is parsed)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. DecompressionBombWarning: decode() reports it
            with Image.open(io.BytesIO(data)) as img:
                return exif_fields(img)
    except Exception:
        return {}


def exif_from_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """EXIF fields of an image file (only the header is read)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. DecompressionBombWarning: decode() reports it
            with Image.open(path) as img:
                return exif_fields(img)
    except Exception:
        return {}


# ------------------------------------------------------------------- SQLite
def has_tables(conn: sqlite3.Connection) -> bool:
    """True if the index has the metadata tables (schema 2 or later)."""
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE name='image_text'").fetchone()
    return row is not None


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the metadata tables and fill the text index from stored tags (a migration)."""
    for stmt in _split(METADATA_DDL):
        conn.execute(stmt)
    for (id_,) in conn.execute("SELECT id FROM images WHERE tags != ''").fetchall():
        refresh_text(conn, int(id_))


def _split(script: str) -> list[str]:
    """Statements of a DDL script (a trigger body keeps its inner semicolons)."""
    out, buf = [], ""
    for line in script.strip().splitlines():
        buf += line + "\n"
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    return out


def _body(tags: str, fields: dict[str, Any]) -> str:
    parts = [t for t in (tags or "").split(",") if t]
    parts += [str(v) for v in fields.values() if v not in (None, "")]
    return "\n".join(parts)


def refresh_text(conn: sqlite3.Connection, image_id: int) -> None:
    """Rewrite the FTS row of one image from its tags and metadata fields."""
    row = conn.execute(
        "SELECT i.tags, m.fields FROM images i LEFT JOIN image_meta m ON m.image_id = i.id"
        " WHERE i.id = ?",
        (image_id,),
    ).fetchone()
    conn.execute("DELETE FROM image_text WHERE rowid = ?", (image_id,))
    if row is None:
        return
    body = _body(row[0], json.loads(row[1]) if row[1] else {})
    if body:
        conn.execute("INSERT INTO image_text(rowid, body) VALUES (?, ?)", (image_id, body))


def write_meta(
    conn: sqlite3.Connection,
    image_id: int,
    sidecar: dict[str, Any] | None = None,
    exif: dict[str, Any] | None = None,
) -> None:
    """Store an image's sidecar and/or EXIF fields (None keeps the stored part)."""
    old = conn.execute(
        "SELECT sidecar, exif FROM image_meta WHERE image_id = ?", (image_id,)
    ).fetchone()
    side = sidecar if sidecar is not None else (json.loads(old[0]) if old else {})
    ex = exif if exif is not None else (json.loads(old[1]) if old else {})
    fields = {**ex, **side}
    if fields:
        conn.execute(
            "INSERT INTO image_meta(image_id, sidecar, exif, fields) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(image_id) DO UPDATE SET sidecar = excluded.sidecar,"
            " exif = excluded.exif, fields = excluded.fields",
            (
                image_id,
                json.dumps(side, ensure_ascii=False),
                json.dumps(ex, ensure_ascii=False),
                json.dumps(fields, ensure_ascii=False),
            ),
        )
        conn.executemany(
            "INSERT OR IGNORE INTO meta_fields(name) VALUES (?)", [(k,) for k in fields]
        )
    else:
        conn.execute("DELETE FROM image_meta WHERE image_id = ?", (image_id,))
    refresh_text(conn, image_id)


def stored_sidecars(conn: sqlite3.Connection) -> dict[int, dict[str, Any]]:
    """``{image id: sidecar fields}`` as stored (images with none are absent)."""
    if not has_tables(conn):
        return {}
    return {
        int(r[0]): json.loads(r[1])
        for r in conn.execute("SELECT image_id, sidecar FROM image_meta WHERE sidecar != '{}'")
    }


def known_fields(conn: sqlite3.Connection) -> list[str]:
    """Every metadata field name stored in this index, sorted."""
    if not has_tables(conn):
        return []
    return sorted(r[0] for r in conn.execute("SELECT name FROM meta_fields"))


def has_text(conn: sqlite3.Connection) -> bool:
    """True if any image has searchable text (tags or metadata)."""
    if not has_tables(conn):
        return False
    return conn.execute("SELECT 1 FROM image_text LIMIT 1").fetchone() is not None


def fields_of(conn: sqlite3.Connection, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """``{image id: merged fields}`` for ``ids`` that have metadata."""
    ids = [int(i) for i in ids]
    if not ids or not has_tables(conn):
        return {}
    out: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ids), 900):
        chunk = ids[start : start + 900]
        q = f"SELECT image_id, fields FROM image_meta WHERE image_id IN ({','.join('?' * len(chunk))})"
        for r in conn.execute(q, chunk):
            out[int(r[0])] = json.loads(r[1])
    return out
