"""Text queries: sidecar and EXIF metadata in FTS5, --where filters, ImageNet class keywords."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.errors import CbirError
from cbir.index import metadata
from cbir.index.store import IndexStore
from cbir.pipeline import index_folder
from cbir.search import filtered
from cbir.search.searcher import Searcher
from cbir.search.where import matching_ids, parse_where
from tests.conftest import FASHION_ROOT, needs_fashion

CSV = """path,Title,Artist,year,style
astronaut.png,Portrait of an astronaut,NASA,1984,photograph
chelsea.jpg,The starry night cat,Vincent van Gogh,1889,post-impressionism
coins.jpg,Old coins,Unknown,1850,
rocket.jpg,Rocket launch,NASA,1969,photograph
"""


def _write_exif_jpeg(path: Path) -> None:
    from skimage import data

    exif = Image.Exif()
    exif[315] = "Eadweard Muybridge"
    exif[270] = "The horse in motion"
    exif[271] = "Canon"
    exif[272] = "Canon EOS 5D"
    exif.get_ifd(0x8769)[36867] = "2019:07:04 12:30:00"
    img = Image.fromarray(data.horse().astype(np.uint8) * 255).convert("RGB")
    img.save(path, quality=90, exif=exif)


def _art(root: Path) -> Path:
    """photos_copy plus sidecars of all three kinds and a JPEG with EXIF."""
    (root / "metadata.csv").write_text(CSV)
    (root / "sub" / "metadata.json").write_text(
        json.dumps(
            {
                "camera.jpg": {
                    "title": "A cameraman",
                    "artist": "Unknown",
                    "year": "1890",
                    "tags": ["film", "Portrait"],
                },
                "coffee.png": {"title": "Coffee cup", "year": 2001},
            }
        )
    )
    # per-image JSON beats the folder's metadata.json, field by field
    (root / "sub" / "coffee.png.json").write_text(
        json.dumps({"title": "Cafe terrace at night", "Artist": "Vincent van Gogh", "year": 1888})
    )
    _write_exif_jpeg(root / "muybridge.jpg")
    return root


@pytest.fixture(scope="module")
def art_index(photos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import shutil

    root = tmp_path_factory.mktemp("art") / "photos"
    shutil.copytree(photos_dir, root)
    _art(root)
    idx = root.parent / "idx"
    index_folder(root, idx, progress=False)
    return root, idx


def _fields(idx: Path) -> dict[str, dict]:
    store = IndexStore.open(idx)
    try:
        rows = {r["id"]: Path(r["path"]).name for r in store.rows()}
        return {rows[i]: f for i, f in metadata.fields_of(store.conn, rows).items()}
    finally:
        store.close()


# ----------------------------------------------------------------- ingest
def test_sidecar_csv_json_per_image_and_exif(art_index: tuple[Path, Path]) -> None:
    _, idx = art_index
    f = _fields(idx)
    assert f["chelsea.jpg"] == {
        "title": "The starry night cat",
        "artist": "Vincent van Gogh",
        "year": 1889,  # numeric text is stored as a number
        "style": "post-impressionism",
    }
    assert "style" not in f["coins.jpg"]  # empty CSV cells are no value
    assert f["camera.jpg"]["year"] == 1890  # metadata.json in a sub-folder, relative paths
    assert f["coffee.png"] == {
        "title": "Cafe terrace at night",
        "year": 1888,
        "artist": "Vincent van Gogh",
    }
    ex = f["muybridge.jpg"]
    assert ex["artist"] == "Eadweard Muybridge" and ex["description"] == "The horse in motion"
    assert ex["camera"] == "Canon EOS 5D"
    assert ex["date"] == "2019-07-04 12:30:00" and ex["year"] == 2019
    assert "moon.png" not in f  # no metadata, no row


def test_fts_bm25_ranking_and_exif_text(art_index: tuple[Path, Path]) -> None:
    _, idx = art_index
    s = Searcher(idx)
    try:
        hits = s.search_text("van gogh 1889", 10, mode="metadata")
        names = [Path(h.path).name for h in hits]
        # both van Gogh images match; the one that also has 1889 ranks first
        assert names == ["chelsea.jpg", "coffee.png"]
        assert hits[0].score > hits[1].score > 0 and all(h.source == "metadata" for h in hits)
        assert [h.rank for h in hits] == [1, 2]
        # Porter stemming and EXIF text: "horses" finds "The horse in motion"
        assert [Path(h.path).name for h in s.search_text("horses", 5, mode="metadata")] == [
            "muybridge.jpg"
        ]
        # FTS operators in the query are plain words, not syntax
        assert s.search_text('NASA" OR * NEAR(', 10, mode="metadata")
        assert s.search_text("zzzunknownword", 10, mode="metadata") == []
    finally:
        s.close()


def test_incremental_metadata_update(photos_copy: Path, tmp_path: Path) -> None:
    root = _art(photos_copy)
    idx = tmp_path / "idx"
    index_folder(root, idx, progress=False)
    # a CSV row changes, a row goes, a per-image JSON goes, an image with metadata goes
    (root / "metadata.csv").write_text(
        CSV.replace("Rocket launch,NASA,1969", "Rocket launch,NASA,1970").replace(
            "coins.jpg,Old coins,Unknown,1850,\n", ""
        )
    )
    (root / "sub" / "coffee.png.json").unlink()
    (root / "chelsea.jpg").unlink()
    summary = index_folder(root, idx, progress=False)
    assert summary.indexed == 0 and summary.removed == 1  # nothing embedded again
    f = _fields(idx)
    assert f["rocket.jpg"]["year"] == 1970
    assert "coins.jpg" not in f
    assert f["coffee.png"] == {"title": "Coffee cup", "year": 2001}  # back to metadata.json
    assert f["muybridge.jpg"]["artist"] == "Eadweard Muybridge"  # EXIF kept
    store = IndexStore.open(idx)
    try:
        live = {r["id"] for r in store.rows()}
        meta_ids = {r[0] for r in store.conn.execute("SELECT image_id FROM image_meta")}
        text_ids = {r[0] for r in store.conn.execute("SELECT rowid FROM image_text")}
        assert meta_ids <= live and text_ids <= live
    finally:
        store.close()
    s = Searcher(idx)
    try:
        assert [Path(h.path).name for h in s.search_text("gogh", 5, mode="metadata")] == []
        assert [Path(h.path).name for h in s.search_text("1970", 5, mode="metadata")] == [
            "rocket.jpg"
        ]
    finally:
        s.close()
    # a third run with nothing changed commits nothing
    store = IndexStore.open(idx)
    gen = store.generation
    store.close()
    index_folder(root, idx, progress=False)
    store = IndexStore.open(idx)
    assert store.generation == gen
    store.close()


def test_bad_sidecar_is_a_clear_error(photos_copy: Path, tmp_path: Path) -> None:
    (photos_copy / "metadata.csv").write_text("title,year\nx,1\n")
    with pytest.raises(CbirError, match=r"metadata.csv: no column naming the image"):
        index_folder(photos_copy, tmp_path / "idx", progress=False)
    (photos_copy / "metadata.csv").unlink()
    (photos_copy / "metadata.json").write_text("{not json")
    with pytest.raises(CbirError, match=r"metadata.json: not valid JSON"):
        index_folder(photos_copy, tmp_path / "idx", progress=False)


def test_schema_1_index_is_migrated(photos_copy: Path, tmp_path: Path) -> None:
    idx = tmp_path / "idx"
    index_folder(photos_copy, idx, progress=False)
    store = IndexStore.open(idx)
    some = store.rows()[0]["id"]
    store.close()
    with sqlite3.connect(idx / "meta.sqlite") as c:  # make it an index of the old schema
        c.executescript(
            "DROP TRIGGER images_meta_gone; DROP TABLE image_meta; DROP TABLE meta_fields;"
            " DROP TABLE image_text;"
        )
        c.execute("UPDATE images SET tags='oldtag' WHERE id=?", (some,))
        c.execute("UPDATE meta SET value='1' WHERE key='schema'")
    s = Searcher(idx)
    try:
        assert s.store.get_meta("schema") == 2
        hits = s.search_text("oldtag", 5, mode="metadata")
        assert [h.id for h in hits] == [some]
    finally:
        s.close()


# ------------------------------------------------------------------ where
def test_where_grammar_binds_values() -> None:
    w = parse_where(
        "year < 1900 and (artist contains 'Gogh' or style = \"photo'graph\")",
        ["year", "artist", "style"],
    )
    assert "Gogh" not in w.sql and "1900" not in w.sql and "photo" not in w.sql
    assert w.params == ['$."year"', 1900, '$."artist"', "gogh", '$."style"', "photo'graph"]


@pytest.mark.parametrize(
    "text,msg",
    [
        ("year < 1900; DROP TABLE images", "unexpected"),
        ("year < 1900) OR (1=1", "unexpected"),
        ("year < 1900 -- comment", "unexpected"),
        ("year = 1 UNION SELECT path FROM images", "unexpected"),
        ("sqlite_master = 1", "unknown field"),
        ("images.path = 'x'", "unknown field"),
        ("year' = 1", "unexpected"),
        ("year <", "ends too early"),
        ("year 1900", "expected an operator"),
        ("", "empty"),
        ("(year < 1900", "not closed"),
        ("1 = 1", "expected a field name"),
    ],
)
def test_where_refusals(text: str, msg: str) -> None:
    with pytest.raises(CbirError, match=msg) as e:
        parse_where(text, ["year", "artist"])
    assert "\n" not in str(e.value)


def test_where_semantics(art_index: tuple[Path, Path]) -> None:
    _, idx = art_index
    store = IndexStore.open(idx)
    try:
        names = {r["id"]: Path(r["path"]).name for r in store.rows()}
        fields = metadata.known_fields(store.conn)

        def run(text: str) -> set[str]:
            return {names[i] for i in matching_ids(store.conn, parse_where(text, fields))}

        assert run("year < 1900") == {"chelsea.jpg", "coins.jpg", "camera.jpg", "coffee.png"}
        assert run("year >= 1900 and year != 2019") == {"astronaut.png", "rocket.jpg"}
        assert run("artist contains 'GOGH'") == {"chelsea.jpg", "coffee.png"}
        assert run("style like 'post%' or name = 'rocket.jpg'") == {"chelsea.jpg", "rocket.jpg"}
        assert run("not year < 2000 and year > 0") == {"muybridge.jpg"}
        assert run("camera = 'Canon EOS 5D'") == {"muybridge.jpg"}
        assert run("tags = portrait") == {"camera.jpg"}  # a sidecar tags list
        assert run("tags != portrait and year < 1900") == {"chelsea.jpg", "coins.jpg", "coffee.png"}
        assert len(run("width > 0")) == len(names)
        assert store.count() == len(names)  # the tables are intact
    finally:
        store.close()


@pytest.mark.parametrize("selector,exact_max", [(True, 16384), (False, 16384), (False, 0)])
def test_filtered_image_search_returns_k(
    art_index: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, selector: bool, exact_max: int
) -> None:
    """faiss's id selector, exact search over the passing ids, and the deeper-search path
    each agree with brute force."""
    root, idx = art_index
    monkeypatch.setattr(filtered, "USE_SELECTOR", selector)
    monkeypatch.setattr(filtered, "EXACT_MAX", exact_max)
    s = Searcher(idx)
    try:
        full = s.search_file(root / "chelsea.jpg", 100)
        allowed = {i for i in matching_ids(s.store.conn, s.where("year < 2000"))}
        assert len(allowed) == 6
        expect = [h.id for h in full if h.id in allowed][:5]
        hits = s.search_file(root / "chelsea.jpg", 5, where="year < 2000")
        assert [h.id for h in hits] == expect and len(hits) == 5
        assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
        # fewer pass than k: all of them
        assert len(s.search_file(root / "chelsea.jpg", 5, where="artist contains 'gogh'")) == 2
        # the filter applies to text queries too
        hits = s.search_text("nasa", 10, where="year < 1980", mode="metadata")
        assert [Path(h.path).name for h in hits] == ["rocket.jpg"]
    finally:
        s.close()


# ------------------------------------------------------------------- CLI
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cbir.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_text_where_json(art_index: tuple[Path, Path]) -> None:
    root, idx = art_index
    r = _cli("search", str(idx), "--text", "van gogh 1889", "--text-mode", "metadata", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["query"] == "van gogh 1889"
    assert [Path(h["path"]).name for h in out["results"]] == ["chelsea.jpg", "coffee.png"]
    assert set(out["results"][0]) == {"rank", "id", "path", "score", "source"}
    r = _cli(
        "search", str(idx), str(root / "chelsea.jpg"), "--where", "year < 1900", "-k", "3", "--json"
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["results"]
    assert len(res) == 3 and Path(res[0]["path"]).name == "chelsea.jpg"
    r = _cli(
        "search", str(idx), str(root / "chelsea.jpg"), "--where", "year < 1900; DROP TABLE images"
    )
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "--where" in r.stderr
    r = _cli("search", str(idx), "--text", "cat", "--text-mode", "joint")
    assert r.returncode == 1 and "no image-text model" in r.stderr
    r = _cli("search", str(idx))
    assert r.returncode == 1 and "--text" in r.stderr


# --------------------------------------------------------- class keywords
@needs_fashion
def test_class_keywords_find_fashion_mnist_by_synonym(tmp_path: Path) -> None:
    """No metadata: "tee shirt" reaches the ImageNet class "T-shirt" through MiniLM, and
    the images the backbone's classifier calls T-shirts are Fashion-MNIST's T-shirts."""
    from cbir.data.idx import FASHION_CLASSES, read_idx
    from cbir.search.text import class_names, match_classes

    names = class_names()
    assert "sneaker" in [names.label[c] for c, _ in match_classes("running shoe")]
    imgs = read_idx(FASHION_ROOT / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_ROOT / "t10k-labels-idx1-ubyte.gz")
    root = tmp_path / "fm"
    for c, cname in enumerate(FASHION_CLASSES):
        if cname not in ("T-shirt/top", "Shirt", "Dress", "Pullover", "Coat", "Bag"):
            continue  # T-shirts among the classes most like them, and bags
        d = root / cname.replace("/", "-")
        d.mkdir(parents=True)
        for i in np.flatnonzero(labels == c)[:25]:
            Image.fromarray(imgs[i]).save(d / f"{i:05d}.png")
    idx = tmp_path / "idx"
    index_folder(root, idx, progress=False)
    s = Searcher(idx)
    try:
        hits = s.search_text("tee shirt", 10, mode="classes")
        assert len(hits) == 10 and all(h.source == "classes" for h in hits)
        good = sum(Path(h.path).parent.name == "T-shirt-top" for h in hits)
        assert good >= 7, [h.path for h in hits]  # chance: 1 in 6
        auto = s.search_text("tee shirt", 10)  # no metadata: auto falls back to classes
        assert [h.id for h in auto] == [h.id for h in hits]
        assert s.search_text("tee shirt", 10, where="id < 0", mode="classes") == []
    finally:
        s.close()


@pytest.mark.slow
def test_onnx_sentence_encoder_equals_the_pytorch_model() -> None:
    """The ONNX export gives the packaged model's embeddings (transformers, PyTorch)."""
    from cbir.backbones.minilm import get_encoder, reference_encode

    texts = ["sneaker", "a running shoe on a white background", "van gogh 1889", "x" * 2000]
    ours = get_encoder().encode(texts)
    ref = reference_encode(texts)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_uploads_exif_and_tags_are_searchable(photos_copy: Path, tmp_path: Path) -> None:
    from cbir import ops

    idx = tmp_path / "idx"
    index_folder(photos_copy, idx, progress=False)
    _write_exif_jpeg(tmp_path / "m.jpg")
    data = (tmp_path / "m.jpg").read_bytes()
    added = ops.add_image_bytes(idx, data, "m.jpg", tags="zebra")
    s = Searcher(idx)
    try:
        assert [h.id for h in s.search_text("muybridge", 5, mode="metadata")] == [added.id]
        assert [h.id for h in s.search_text("zebra", 5, mode="metadata")] == [added.id]
        ops.add_image_bytes(idx, data, "m.jpg", tags="galloping")  # same content: new tags
        assert [h.id for h in s.search_text("galloping", 5, mode="metadata")] == [added.id]
        assert s.search_text("zebra", 5, mode="metadata") == []
        assert [h.id for h in s.search_text("horse", 5, where="tags = galloping")] == [added.id]
        ops.delete_ids(idx, [added.id])
        with pytest.raises(CbirError, match="no image has metadata or tags"):
            s.search_text("muybridge", 5, mode="metadata")  # its rows went with it
    finally:
        s.close()


def test_service_search_where(art_index: tuple[Path, Path]) -> None:
    """GET /search and POST /search take the same filter; a bad one is a 400 saying why."""
    from fastapi.testclient import TestClient

    from cbir.service.app import create_app

    root, idx = art_index
    store = IndexStore.open(idx)
    try:
        names = {r["id"]: Path(r["path"]).name for r in store.rows()}
    finally:
        store.close()
    chelsea = next(i for i, n in names.items() if n == "chelsea.jpg")
    old = {"chelsea.jpg", "coins.jpg", "camera.jpg", "coffee.png"}
    with TestClient(create_app(idx, allowed_hosts=["testserver"])) as c:
        r = c.get("/search", params={"id": chelsea, "k": 3, "where": "year < 1900"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["where"] == "year < 1900" and len(body["results"]) == 3
        assert {names[h["id"]] for h in body["results"]} <= old
        assert body["results"][0]["id"] == chelsea
        data = (root / "chelsea.jpg").read_bytes()
        r = c.post(
            "/search",
            files={"file": ("q.jpg", data, "image/jpeg")},
            data={"k": "10", "where": "artist contains 'gogh'"},
        )
        assert r.status_code == 200, r.text
        assert {names[h["id"]] for h in r.json()["results"]} == {"chelsea.jpg", "coffee.png"}
        r = c.get("/search", params={"id": chelsea, "where": "year < 1900; DROP TABLE images"})
        assert r.status_code == 400 and "--where" in r.json()["error"]
        assert c.get("/search", params={"id": chelsea, "k": 20}).json()["results"]  # intact
