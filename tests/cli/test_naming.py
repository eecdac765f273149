"""One name per concept across the subcommands (issue 18 item 5): defaults and help texts in
every ``--help``, ``cbir --version``, old spellings kept as hidden aliases, the index as
``INDEX`` or ``--index``, and evaluate's two recalls told apart."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

import cbir
from cbir.cli import main
from cbir.cli.common import resolve_index
from cbir.cli.main import build_parser
from cbir.errors import CbirError


def subparsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return dict(sub.choices)


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"cbir {cbir.__version__}"


def test_every_option_has_a_help_text_and_its_default_shown():
    missing, no_default, vague = [], [], []
    for name, sp in subparsers().items():
        text = sp.format_help()
        if "see the source" in text or "see cbir." in text:
            vague.append(name)
        for a in sp._actions:
            if isinstance(a, argparse._HelpAction) or a.help == argparse.SUPPRESS:
                continue
            if not a.help:
                missing.append(f"{name} {a.option_strings or a.dest}")
            unset = a.default in (None, False, []) or not a.option_strings
            if not unset and "default" not in sp._get_formatter()._expand_help(a):
                no_default.append(f"{name} {a.option_strings}")
    assert (missing, no_default, vague) == ([], [], [])
    index_help = subparsers()["index"].format_help()
    assert "(default: 64)" in index_help and "(default: 2)" in index_help


def test_json_has_a_help_text_everywhere():
    for name, sp in subparsers().items():
        for a in sp._actions:
            if "--json" in a.option_strings:
                assert a.help and "JSON" in a.help, name


def test_sampler_names_match_the_registry():
    from cbir.cli.train import SAMPLER_NAMES
    from cbir.samplers import SAMPLERS

    assert SAMPLER_NAMES == tuple(SAMPLERS)


def parse(*argv: str) -> argparse.Namespace:
    args = build_parser().parse_args(list(argv))
    resolve_index(args)
    return args


def test_one_name_per_concept_old_spellings_hidden_aliases():
    assert parse("index", "p", "--index", "i", "--decode-threads", "3").decode_threads == 3
    assert parse("index", "p", "--index", "i", "--workers", "3").decode_threads == 3
    assert parse("index", "p", "--index", "i").decode_threads == 2
    assert parse("evaluate", "--dataset", "d", "--query-limit", "5").query_limit == 5
    assert parse("evaluate", "--dataset", "d", "--limit-queries", "5").query_limit == 5
    assert parse("evaluate", "--dataset", "d").query_limit is None
    cal = ("calibrate", "I", "--dataset", "d")
    assert parse(*cal, "--image-limit", "5").image_limit == parse(*cal, "--limit", "5").image_limit
    assert parse(*cal).image_limit == 4000
    helps = {n: sp.format_help() for n, sp in subparsers().items()}
    assert "--workers" not in helps["index"] and "--decode-threads" in helps["index"]
    assert "--limit-queries" not in helps["evaluate"] and "--query-limit" in helps["evaluate"]
    assert "--query-limit" in helps["train"] and "--workers" in helps["serve"]
    assert "--index INDEX" in helps["describe"] and "INDEX_DIR" not in helps["describe"]


def test_the_index_is_positional_or_an_option_everywhere():
    for cmd in ("info", "check", "serve", "shard", "prune", "calibrate"):
        extra = {"shard": ["--out", "o"], "calibrate": ["--dataset", "d"]}.get(cmd, [])
        assert parse(cmd, "I", *extra).index_dir == parse(cmd, "--index", "I", *extra).index_dir
    a = parse("search", "--index", "I", "q.jpg")
    assert (a.index_dir, a.query) == ("I", "q.jpg")
    a = parse("search", "I", "q.jpg")
    assert (a.index_dir, a.query) == ("I", "q.jpg")
    assert parse("index", "photos", "I").index == parse("index", "photos", "--index", "I").index
    with pytest.raises(CbirError, match="given twice"):
        parse("info", "I", "--index", "J")
    with pytest.raises(CbirError, match="give the index directory"):
        parse("check")


def test_renamed_options_work_end_to_end(photos_dir, tmp_path, capsys):
    src = tmp_path / "p"
    src.mkdir()
    for f in sorted(photos_dir.glob("*.jpg"))[:3]:
        shutil.copy(f, src / f.name)
    idx = tmp_path / "idx"
    assert main(["index", str(src), str(idx), "--decode-threads", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 3
    assert main(["index", str(src), "--index", str(idx), "--workers", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unchanged"] == 3
    q = sorted(src.iterdir())[0]
    assert main(["search", "--index", str(idx), str(q), "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["path"] == str(q)
    assert main(["info", "--index", str(idx), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 3


def test_evaluate_names_its_two_recalls_apart(photos_dir, tmp_path, capsys):
    ds = tmp_path / "ds"
    for i, f in enumerate(sorted(photos_dir.rglob("*.*"))[:8]):
        (ds / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.open(f).convert("RGB").save(ds / "ab"[i % 2] / f"{f.stem}.jpg")
    code = main(["evaluate", "--dataset", str(ds), "--size", "64", "--limit-queries", "8"])
    out = capsys.readouterr().out
    assert code == 0
    assert "rank-1 recall: queries with a relevant item in the top 1 (recall@1)" in out
    assert "R@1 of the PR curve: a query's relevant items in the top 1 (r@1)" in out
    assert not any(line.strip().startswith(("r@1 ", "recall@1 ")) for line in out.splitlines())


def test_describe_takes_a_run_as_model_or_an_index_as_index(capsys):
    assert main(["describe", str(Path(__file__)), "--caption", "x"]) == 1
    err = capsys.readouterr().err
    assert "--model RUN_DIR (a vsepp run) or --index INDEX" in err
