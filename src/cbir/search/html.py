"""A self-contained HTML page of results: thumbnails embedded as data URIs."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence

from PIL import Image

from cbir.data.images import open_image
from cbir.errors import ImageError
from cbir.search.searcher import Hit
from cbir.utils import atomic_write_bytes

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h2{font-size:1.05em;margin:1.6em 0 .4em;word-break:break-all}
.row{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
figure{margin:0;width:150px;background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px}
figure.query{border:2px solid #2a6df4}
figure img{width:150px;height:150px;object-fit:contain;background:#eee;display:block}
figcaption{font-size:11px;margin-top:4px;word-break:break-all}
.score{font-weight:600}
"""


def thumbnail_data_uri(path: str, size: int = 150) -> str:
    """A JPEG thumbnail of ``path`` as a data URI ('' if the file cannot be read)."""
    try:
        img = open_image(path, draft_size=size)
    except ImageError:
        return ""
    img.thumbnail((size, size), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(src: str, caption: str, cls: str = "") -> str:
    img = f'<img src="{src}" alt="">' if src else "<div>(unreadable)</div>"
    return f'<figure class="{cls}">{img}<figcaption>{caption}</figcaption></figure>'


def render(results: Sequence[tuple[str, Sequence[Hit]]], title: str = "cbir results") -> str:
    """HTML for (query, hits) pairs: the query first, then its ranked results."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
    ]
    for query, hits in results:
        parts.append(f"<h2>query: {html.escape(query)}</h2><div class='row'>")
        qsrc = "" if query.startswith("id:") else thumbnail_data_uri(query)
        if query.startswith("id:") and hits:
            qsrc = thumbnail_data_uri(hits[0].path)
        parts.append(_figure(qsrc, "query", "query"))
        for h in hits:
            cap = (
                f"#{h.rank} <span class='score'>{h.score:.3f}</span> id {h.id}<br>"
                f"{html.escape(os.path.basename(h.path))}"
            )
            parts.append(_figure(thumbnail_data_uri(h.path), cap))
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(
    path: str | os.PathLike[str],
    results: Sequence[tuple[str, Sequence[Hit]]],
    title: str = "cbir results",
) -> None:
    atomic_write_bytes(path, render(results, title).encode())
