"""``cbir info`` (what an index holds) and ``cbir datasets`` (where cbir looks for data)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from cbir.cli.common import AddCommand, add_index_argument, human_bytes, print_json


def cmd_info(args: argparse.Namespace) -> int:
    """Print the index's count, dimension, backbone, model, type and size."""
    from cbir.heads.transform import spec_digest
    from cbir.index.store import IndexStore

    store = IndexStore.open(args.index_dir)
    try:
        cfg = store.config
        tr = store.get_meta("transform") or {}
        fa = store.get_meta("faiss") or {}
        info = {
            "index": str(store.root),
            "count": store.count(),
            "dimension": tr.get("dim", cfg["feature_dim"]),
            "kind": cfg.get("kind", "float"),
            "backbone": cfg["backbone"],
            "model": {k: v for k, v in tr.items() if k != "mean"},
            "index_type": cfg["index_type"],
            "generation": store.generation,
            "index_file": fa.get("file"),
            "size_on_disk": store.size_on_disk(),
            "metadata": _metadata_info(store),
            "center": _center_info(tr),
            "model_fingerprint": spec_digest(tr) if tr else None,
        }
    finally:
        store.close()
    if args.json:
        print_json(info)
    else:
        bb = info["backbone"]
        print(f"index:        {info['index']}")
        print(f"count:        {info['count']}")
        print(f"dimension:    {info['dimension']} ({info['kind']})")
        print(
            f"backbone:     {bb['backbone']} (weights {bb.get('weights') or bb.get('sha256', '?')[:12]}, {bb['preprocess']['size']} px, {bb['preprocess']['mode']})"
        )
        if bb.get("pooling") or bb.get("scales") or bb.get("flip") or bb.get("power"):
            scales = ",".join(str(v) for v in bb.get("scales") or [1.0])
            flip = ", flip-averaged (--flip)" if bb.get("flip") else ""
            power = f", power {bb['power']:g} (--power)" if bb.get("power") else ""
            print(f"pooling:      {bb.get('pooling', 'avg')}, scales {scales}{flip}{power}")
        print(
            f"model:        {info['model'].get('kind')}"
            + (" (centred)" if info["model"].get("center") else "")
            + (", PCA-whitened" if info["model"].get("whiten") else "")
        )
        if info["model_fingerprint"]:
            print(
                f"fingerprint:  {info['model_fingerprint']} (what `cbir evaluate --index` measures)"
            )
        c = info["center"]
        if c is not None:
            print(f"centring:     {_center_line(c, info['count'], info['index'])}")
        print(f"index type:   {info['index_type']}")
        print(f"size on disk: {human_bytes(info['size_on_disk'])}")
        md = info["metadata"]
        print(
            f"metadata:     {md['images']} image(s) with text"
            + (f"; fields: {', '.join(md['fields'])}" if md["fields"] else "")
        )
    return 0


def _center_info(spec: dict[str, Any]) -> dict[str, Any] | None:
    """When and on how many images a centred index fitted its mean (None: not centred)."""
    if not spec.get("center"):
        return None
    fitted = spec.get("fitted") or {}
    return {
        "fitted": spec.get("mean") is not None,
        "images": fitted.get("images"),
        "at": fitted.get("at"),
    }


def _center_line(c: dict[str, Any], count: int, index: str) -> str:
    """The ``cbir info`` line on the centring mean, and when to refit it."""
    if not c["fitted"]:
        return "on the collection mean, fitted at the first build (none yet)"
    when = f" on {c['images']} image(s)" if c["images"] is not None else ""
    when += f" at {c['at']}" if c["at"] else " (before fits were dated)"
    return (
        f"on the collection mean, fitted{when}; the index holds {count} now. Refit after the"
        f" collection has changed a lot: cbir index FOLDER --index {index} --refit-center"
    )


def _metadata_info(store: Any) -> dict[str, Any]:
    """Images with searchable text (sidecar, EXIF, tags) and the metadata field names."""
    from cbir.index import metadata

    if not metadata.has_tables(store.conn):
        return {"images": 0, "fields": []}
    n = store.conn.execute("SELECT COUNT(*) FROM image_text").fetchone()[0]
    return {"images": int(n), "fields": metadata.known_fields(store.conn)}


def cmd_datasets(args: argparse.Namespace) -> int:
    """Print each dataset layout and the folders it looks in."""
    from cbir.data.registry import layouts

    rows = []
    for lay in layouts():
        roots = [str(r) for r in lay.roots()]
        found = next((r for r in roots if os.path.exists(r)), None)
        rows.append(
            {"name": lay.name, "description": lay.description, "looks_in": roots, "found": found}
        )
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            status = f"found at {r['found']}" if r["found"] else "not found"
            print(f"{r['name']:<16} {r['description']}")
            print(f"{'':<16} looks in: {', '.join(r['looks_in']) or '(give a path)'} [{status}]")
        print(
            "Any directory in one of these layouts can be passed by path; set CBIR_DATA to add a root."
        )
    return 0


def register(add: AddCommand) -> None:
    """Add ``cbir info`` and ``cbir datasets``."""
    sp = add(
        "info", cmd_info, "Show an index: count, dimension, backbone, index type, size on disk."
    )
    add_index_argument(sp)
    sp.add_argument("--json", action="store_true", help="print the index's description as JSON")

    sp = add(
        "datasets", cmd_datasets, "List the dataset layouts cbir reads and where it looks for them."
    )
    sp.add_argument("--json", action="store_true", help="print the layouts as JSON")
