"""``cbir index`` refuses what it cannot build before it writes (issue 16, items 6 and 9).

- An ``--index-type`` the collection is too small to train (``IVF1024,PQ32`` on 13 photos)
  is refused before any image is embedded, and nothing is written: a re-run with ``Flat``
  works.
- A search index that cannot be built after all (a rule that missed a component) leaves
  no committed generation behind: the new index is rolled back.
- An index folder whose parent does not exist is an error; only the index folder itself
  is ever created.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cbir import pipeline
from cbir.cli import main
from cbir.index import faiss_index
from cbir.index.check import check_index


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def embed_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many images reached the embedding stage (the real stage still runs)."""
    calls: list[int] = []
    real = pipeline.embed_stream

    def counting(todo, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(len(todo))
        return real(todo, *args, **kwargs)

    monkeypatch.setattr(pipeline, "embed_stream", counting)
    return calls


def test_untrainable_index_type_is_refused_before_embedding(
    capsys: pytest.CaptureFixture[str], photos_dir: Path, tmp_path: Path, embed_calls: list[int]
) -> None:
    idx = tmp_path / "x.idx"
    for bad, msg in [("IVF1024,PQ32", "1024"), ("PQ32", "256"), ("IVF9,Bogus", "index_factory")]:
        code, _out, err = run(
            capsys,
            "index",
            str(photos_dir),
            "--index",
            str(idx),
            "--index-type",
            bad,
            "--size",
            "64",
        )
        assert code == 1, err
        assert err.count("\n") == 1 and "Traceback" not in err and msg in err, err
        assert bad in err
        assert embed_calls == [], "embedded before refusing"
        assert not idx.exists(), "a refused run left files behind"
    code, out, err = run(
        capsys,
        "index",
        str(photos_dir),
        "--index",
        str(idx),
        "--index-type",
        "Flat",
        "--size",
        "64",
    )
    assert code == 0, err
    assert sum(embed_calls) == 13
    assert check_index(idx).ok
    code, out, err = run(capsys, "search", str(idx), "id:1", "-k", "3")
    assert code == 0 and out.count("\n") >= 3, err
    # a trainable IVF on this collection is accepted (IVF needs one image per list)
    code, _out, err = run(
        capsys,
        "index",
        str(photos_dir),
        "--index",
        str(tmp_path / "ivf"),
        "--index-type",
        "IVF4,Flat",
        "--size",
        "64",
    )
    assert code == 0, err
    assert check_index(tmp_path / "ivf").ok


def test_search_index_that_cannot_be_built_is_rolled_back(
    capsys: pytest.CaptureFixture[str],
    photos_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    embed_calls: list[int],
) -> None:
    """Were the rule to miss a component, faiss's own training error still leaves nothing."""
    monkeypatch.setattr(faiss_index, "_min_train", lambda index_type: 0)
    idx = tmp_path / "new.idx"
    kept = tmp_path / "existing"
    kept.mkdir()
    (kept / "notes.txt").write_text("the user's own file")
    for target, exists_after in [(idx, False), (kept, True)]:
        code, _out, err = run(
            capsys,
            "index",
            str(photos_dir),
            "--index",
            str(target),
            "--index-type",
            "IVF1024,PQ32",
            "--size",
            "64",
        )
        assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
        assert "nothing was kept" in err, err
        assert target.exists() == exists_after
    assert sum(embed_calls) == 26  # the failure came after embedding, as the rule was off
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]
    code, _out, err = run(
        capsys,
        "index",
        str(photos_dir),
        "--index",
        str(kept),
        "--index-type",
        "Flat",
        "--size",
        "64",
    )
    assert code == 0, err
    assert check_index(kept).ok


def test_index_into_missing_parent_creates_nothing(
    capsys: pytest.CaptureFixture[str], photos_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "nonexistent" / "x" / "y.idx"
    code, _out, err = run(capsys, "index", str(photos_dir), "--index", str(target))
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "does not exist" in err and str(tmp_path / "nonexistent" / "x") in err, err
    assert not (tmp_path / "nonexistent").exists()
    # the index folder itself is created when its parent exists
    code, _out, err = run(capsys, "index", str(photos_dir), "--index", str(tmp_path / "y.idx"))
    assert code == 0, err
