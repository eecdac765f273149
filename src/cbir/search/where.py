"""``--where`` filters: a small safe grammar turned into parameterised SQL.

Grammar (keywords are case-insensitive)::

    filter     := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | "(" or ")" | comparison
    comparison := FIELD OP VALUE | FIELD ("like" | "contains") STRING
    OP         := = | == | != | <> | < | <= | > | >=
    VALUE      := NUMBER | 'single' or "double" quoted string | bare word

FIELD is an image column (``id``, ``path``, ``name``, ``width``, ``height``, ``size``,
``tags``, ``added``) or a metadata field stored in the index (sidecar or EXIF: ``year``,
``artist``, ...). Values are always bound as SQL parameters and field names are checked
against the known ones, so user text never becomes SQL. ``tags = cat`` means "has the tag
cat" (in its own tags or a sidecar ``tags`` field); ``contains`` is a case-insensitive substring test; ``like`` is SQL LIKE (``%`` any
text, ``_`` one character). An image without the field never matches a comparison on it.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cbir.errors import CbirError

#: Image-table columns a filter may name, as SQL over ``images``.
COLUMNS = {
    "id": "images.id",
    "path": "images.path",
    "name": "images.path",  # compared on the file name only, see _column_sql
    "width": "images.width",
    "height": "images.height",
    "size": "images.size",
    "tags": "images.tags",
    "added": "images.added",
}
OPS = ("<=", ">=", "!=", "<>", "==", "=", "<", ">")
MAX_FILTER_CHARS = 2000
MAX_TERMS = 64
#: Deepest nesting of ``not`` and parentheses (SQLite's parser stack overflows near 12).
MAX_DEPTH = 8
#: SQLite's INTEGER range: a larger Python int cannot be bound as a parameter.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<num>[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?(?![\w.]))
      | (?P<str>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*")
      | (?P<op><=|>=|!=|<>|==|=|<|>)
      | (?P<paren>[()])
      | (?P<word>[A-Za-z_][\w.\-]*)
    )""",
    re.VERBOSE,
)

HELP = (
    "a filter is FIELD OP VALUE joined by and/or/not and parentheses, with OP one of"
    " = != < <= > >= like contains, and VALUE a number or a quoted string"
    " (e.g. \"year < 1900 and artist contains 'gogh'\")"
)


@dataclass
class Where:
    """A parsed filter: ``sql`` (a condition over ``images`` joined with ``image_meta m``)
    and its ``params``."""

    text: str
    sql: str
    params: list[Any]
    fields: list[str]


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            bad = text[pos:].strip()[:20]
            raise CbirError(f"--where {_shown(text)}: unexpected {bad!r}; {HELP}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _shown(text: str, n: int = 100) -> str:
    """``text`` quoted for a message, cut to ``n`` characters."""
    return repr(text) if len(text) <= n else repr(text[:n]) + f"... ({len(text)} characters)"


def _unquote(s: str) -> str:
    q = s[0]
    body = s[1:-1].replace(q + q, q)
    return re.sub(r"\\(.)", r"\1", body)


class _Parser:
    def __init__(self, text: str, fields: set[str]) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.fields = fields
        self.params: list[Any] = []
        self.used: list[str] = []
        self.terms = 0
        self.depth = 0

    def error(self, what: str) -> CbirError:
        return CbirError(f"--where {_shown(self.text)}: {what}; {HELP}")

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def keyword(self, word: str) -> bool:
        t = self.peek()
        if t and t[0] == "word" and t[1].lower() == word:
            self.i += 1
            return True
        return False

    def take(self) -> tuple[str, str]:
        t = self.peek()
        if t is None:
            raise self.error("it ends too early")
        self.i += 1
        return t

    def parse(self) -> str:
        if not self.toks:
            raise self.error("it is empty")
        sql = self.or_()
        if self.peek() is not None:
            raise self.error(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return sql

    def or_(self) -> str:
        parts = [self.and_()]
        while self.keyword("or"):
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def and_(self) -> str:
        parts = [self.not_()]
        while self.keyword("and"):
            parts.append(self.not_())
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def not_(self) -> str:
        if self.keyword("not"):
            with self.nested():
                return f"(NOT COALESCE({self.not_()}, 0))"
        t = self.peek()
        if t == ("paren", "("):
            self.i += 1
            with self.nested():
                inner = self.or_()
            if self.peek() != ("paren", ")"):
                raise self.error("a '(' is not closed")
            self.i += 1
            return inner
        return self.comparison()

    @contextlib.contextmanager
    def nested(self) -> Iterator[None]:
        """One level of ``not`` or parentheses; at most MAX_DEPTH (SQLite's parser and
        Python's stack both have limits)."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"'not' and parentheses nested more than {MAX_DEPTH} deep")
        try:
            yield
        finally:
            self.depth -= 1

    def comparison(self) -> str:
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise self.error(f"more than {MAX_TERMS} comparisons")
        kind, name = self.take()
        if kind != "word" or name.lower() in ("and", "or", "not", "like", "contains"):
            raise self.error(f"expected a field name, found {name!r}")
        field = name.lower()
        if field not in COLUMNS and field not in self.fields:
            known = sorted(set(COLUMNS) | self.fields)
            raise CbirError(
                f"--where {_shown(self.text)}: unknown field {name!r}; this index knows"
                f" {', '.join(known)}"
            )
        self.used.append(field)
        kind, op = self.take()
        if kind == "word" and op.lower() in ("like", "contains"):
            op = op.lower()
        elif kind != "op":
            raise self.error(f"expected an operator after {name!r}, found {op!r}")
        value = self.value()
        col = self.column(field)
        if field == "tags" and op in ("=", "==", "!=", "<>"):
            self.params.append(str(value).strip().lower())
            test = f"instr(',' || {col} || ',', ',' || ? || ',') > 0"
            return test if op in ("=", "==") else f"(NOT {test})"
        if op == "contains":
            self.params.append(str(value).lower())
            return f"instr(lower({col}), ?) > 0"
        if op == "like":
            self.params.append(str(value))
            return f"({col} LIKE ?)"
        sql_op = {"==": "=", "<>": "!="}.get(op, op)
        self.params.append(value)
        return f"({col} {sql_op} ?)"

    def value(self) -> Any:
        kind, v = self.take()
        if kind == "num":
            if any(c in v for c in ".eE"):
                return float(v)
            n = int(v)
            if not INT_MIN <= n <= INT_MAX:
                raise self.error(f"the integer {_shown(v, 24)} is outside SQLite's 64-bit range")
            return n
        if kind == "str":
            return _unquote(v)
        if kind == "word" and v.lower() not in ("and", "or", "not"):
            return v
        raise self.error(f"expected a value, found {v!r}")

    def column(self, field: str) -> str:
        if field == "name":  # the file name: the text after the last '/'
            return "replace(images.path, rtrim(images.path, replace(images.path, '/', '')), '')"
        if field == "tags":  # the image's tags and a sidecar "tags" field ("a, b" lists)
            meta = "lower(replace(ifnull(json_extract(m.fields, '$.\"tags\"'), ''), ', ', ','))"
            return f"(images.tags || ',' || {meta})"
        if field in COLUMNS:
            return COLUMNS[field]
        self.params.append(f'$."{field}"')  # field names are [a-z0-9_]: checked above
        return "json_extract(m.fields, ?)"


def parse_where(text: str, fields: set[str] | list[str] = ()) -> Where:
    """Parse a ``--where`` filter against the index's metadata ``fields``; CbirError if bad."""
    if len(text) > MAX_FILTER_CHARS:
        raise CbirError(f"--where: at most {MAX_FILTER_CHARS} characters")
    p = _Parser(text, set(fields))
    sql = p.parse()
    return Where(text=text, sql=sql, params=p.params, fields=p.used)


def filter_sql(where: Where) -> tuple[str, list[Any]]:
    """``SELECT images.id ...`` of the images that pass ``where``, and its parameters."""
    return (
        "SELECT images.id FROM images LEFT JOIN image_meta m ON m.image_id = images.id"
        f" WHERE {where.sql}",
        list(where.params),
    )


def matching_ids(conn: sqlite3.Connection, where: Where) -> set[int]:
    """Ids of the images that pass ``where``."""
    from cbir.index.metadata import has_tables

    sql, params = filter_sql(where)
    if not has_tables(conn):  # an old (schema 1) index opened read-only: no metadata
        sql = sql.replace(" image_meta m ", " (SELECT NULL AS image_id, NULL AS fields) m ")
    try:
        return {int(r[0]) for r in conn.execute(sql, params)}
    except sqlite3.OperationalError as e:  # a limit of SQLite's (depth, size), not the data
        if any(w in str(e) for w in ("locked", "I/O", "malformed", "decode")):
            raise
        raise CbirError(
            f"--where {_shown(where.text)}: SQLite cannot run it ({e}); simplify it"
        ) from None
