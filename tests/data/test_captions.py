"""Caption readers on tiny fixtures written in the real layouts (COCO captions JSON,
Flickr30k results.csv, the Karpathy split JSON, simple CSV / JSON), and the Fashion-MNIST
caption set split by wording."""

from __future__ import annotations

import json

import pytest

from cbir.data.captions import (
    FASHION_SYNONYMS,
    FASHION_TEMPLATES,
    Caption,
    fashion_mnist_captions,
    read_captions,
    write_captions_json,
)
from cbir.errors import CbirError


def test_coco_captions_json(tmp_path):
    coco = {
        "info": {"description": "COCO 2017 Dataset"},
        "licenses": [],
        "images": [
            {"license": 3, "file_name": "000000391895.jpg", "height": 360, "width": 640, "id": 391895},
            {"license": 4, "file_name": "000000522418.jpg", "height": 480, "width": 640, "id": 522418},
        ],
        "annotations": [
            {"image_id": 391895, "id": 770337, "caption": "A man with a red helmet on a small moped on a dirt road. "},
            {"image_id": 522418, "id": 770344, "caption": "A woman wearing a net on her head cutting a cake. "},
            {"image_id": 391895, "id": 771687, "caption": "Man riding a motor bike on a dirt road on the countryside."},
        ],
    }  # fmt: skip
    p = tmp_path / "captions_train2017.json"
    p.write_text(json.dumps(coco))
    caps = read_captions(p)
    assert caps.layout == "coco" and len(caps) == 3 and not caps.by_class and not caps.has_splits
    assert caps.captions[0] == Caption(
        "A man with a red helmet on a small moped on a dirt road.", image="000000391895.jpg"
    )
    assert [c.image for c in caps.captions] == [
        "000000391895.jpg",
        "000000522418.jpg",
        "000000391895.jpg",
    ]
    coco["annotations"].append({"image_id": 1, "id": 9, "caption": "nothing"})
    p.write_text(json.dumps(coco))
    with pytest.raises(CbirError, match="image_id 1"):
        read_captions(p)


def test_flickr30k_results_csv(tmp_path):
    p = tmp_path / "results.csv"
    p.write_text(
        "image_name| comment_number| comment\n"
        "1000092795.jpg| 0| Two young guys with shaggy hair look at their hands while hanging out in the yard .\n"
        "1000092795.jpg| 1| Two young , White males are outside near many bushes .\n"
        "10002456.jpg| 0| Several men in hard hats are operating a giant pulley system .\n"
        "2199200615.jpg| 4   A dog runs across the grass .\n"  # the last separator missing
    )
    caps = read_captions(p)
    assert caps.layout == "flickr30k" and len(caps) == 4
    assert caps.captions[1] == Caption(
        "Two young , White males are outside near many bushes .", image="1000092795.jpg"
    )
    assert caps.captions[3] == Caption("A dog runs across the grass .", image="2199200615.jpg")
    p.write_text("image_name| comment_number| comment\nbroken line without separators\n")
    with pytest.raises(CbirError, match=r"results.csv:2"):
        read_captions(p)


def test_karpathy_split_json(tmp_path):
    doc = {
        "images": [
            {"sentids": [0, 1], "imgid": 0, "split": "train", "filename": "1000092795.jpg",
             "sentences": [
                 {"tokens": ["two", "young", "guys"], "raw": "Two young guys with shaggy hair.", "imgid": 0, "sentid": 0},
                 {"tokens": ["two", "young", "white", "males"], "raw": "Two young, White males are outside.", "imgid": 0, "sentid": 1},
             ]},
            {"sentids": [2], "imgid": 1, "split": "test", "filename": "10002456.jpg",
             "sentences": [{"tokens": ["several", "men"], "raw": "Several men in hard hats.", "imgid": 1, "sentid": 2}]},
            {"sentids": [3], "imgid": 2, "split": "val", "filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg",
             "sentences": [{"tokens": ["a", "man", "on", "a", "moped"], "imgid": 2, "sentid": 3}]},
        ],
        "dataset": "flickr30k",
    }  # fmt: skip
    p = tmp_path / "dataset_flickr30k.json"
    p.write_text(json.dumps(doc))
    caps = read_captions(p)
    assert caps.layout == "karpathy" and len(caps) == 4 and caps.has_splits
    assert [c.split for c in caps.captions] == ["train", "train", "test", "val"]
    assert caps.captions[2] == Caption(
        "Several men in hard hats.", image="10002456.jpg", split="test"
    )
    assert caps.captions[3].image == "val2014/COCO_val2014_000000391895.jpg"
    assert caps.captions[3].caption == "a man on a moped"  # tokens when raw is missing


def test_simple_csv_and_json(tmp_path):
    p = tmp_path / "caps.csv"
    p.write_text('path,caption\nsub/cat.jpg,a cat on a sofa\ndog.png,"a dog, running"\n')
    caps = read_captions(p)
    assert caps.layout == "csv" and caps.captions == [
        Caption("a cat on a sofa", image="sub/cat.jpg"),
        Caption("a dog, running", image="dog.png"),
    ]
    p = tmp_path / "classes.csv"
    p.write_text("class,caption,split\nSneaker,a photo of a sneaker,train\nBag,a red bag,TEST\n")
    caps = read_captions(p)
    assert caps.by_class and caps.has_splits
    assert caps.captions[1] == Caption("a red bag", label="Bag", split="test")
    p = tmp_path / "caps.json"
    p.write_text(
        json.dumps(
            [{"image": "a.jpg", "text": "first"}, {"file_name": "b.jpg", "caption": "second"}]
        )
    )
    assert [c.image for c in read_captions(p).captions] == ["a.jpg", "b.jpg"]
    # round trip of the writer
    out = write_captions_json(tmp_path / "rt.json", caps.captions)
    assert read_captions(out).captions == caps.captions


@pytest.mark.parametrize(
    "text, match",
    [
        ("path,label\na.jpg,x\n", "needs a 'caption'"),
        ("caption\nonly a caption\n", "exactly one of"),
        ("path,class,caption\na.jpg,cat,both\n", "exactly one of"),
        ("path,caption\na.jpg,x\n", None),
    ],
)
def test_simple_csv_errors(tmp_path, text, match):
    p = tmp_path / "c.csv"
    p.write_text(text)
    if match is None:
        assert len(read_captions(p)) == 1
    else:
        with pytest.raises(CbirError, match=match):
            read_captions(p)


def test_mixed_kinds_and_missing_files(tmp_path):
    p = tmp_path / "mixed.json"
    p.write_text(json.dumps([{"path": "a.jpg", "caption": "x"}, {"class": "cat", "caption": "y"}]))
    with pytest.raises(CbirError, match="mixes"):
        read_captions(p)
    with pytest.raises(CbirError, match="no such caption file"):
        read_captions(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CbirError, match="not valid JSON"):
        read_captions(tmp_path / "bad.json")


def test_fashion_captions_are_split_by_wording():
    caps = fashion_mnist_captions()
    train = [c for c in caps if c.split == "train"]
    test = [c for c in caps if c.split == "test"]
    assert len(train) == 10 * 3 * 10 and len(test) == 10 * 2 * 3
    assert {c.label for c in test} == set(FASHION_SYNONYMS)
    train_text = {c.caption for c in train}
    assert not train_text & {c.caption for c in test}
    held_tpl = FASHION_TEMPLATES[-3:]
    for c in test:
        words = FASHION_SYNONYMS[c.label]
        assert not any(c.caption == _fill(t, w) for t in FASHION_TEMPLATES for w in words[:-2]), c
        assert any(c.caption == _fill(t, w) for t in held_tpl for w in words[-2:]), c
    assert "an ankle boot" in " ".join(train_text)  # articles fixed


def _fill(template: str, word: str) -> str:
    from cbir.data.captions import _fix_articles

    return _fix_articles(template.format(word))
