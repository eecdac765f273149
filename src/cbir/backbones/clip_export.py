"""Export an open_clip model to the ``onnx-clip:DIR`` layout, once, where open_clip imports;
the index and search then run it on onnxruntime (:mod:`cbir.backbones.onnx_clip`), without
torch. ``export_open_clip("ViT-B-32:/models/weights.bin", "models/clip-b32")``.

Writes ``image.onnx`` (``model.visual``: normalised pixels -> image embedding, with the
model's mean / std in ``metadata_props``), ``text.onnx`` (token ids ``(n, 77)`` ->
``encode_text``) and ``tokenizer.json``: open_clip's byte-level BPE (Radford et al. 2021;
the vocabulary and merges of its ``bpe_simple_vocab_16e6.txt.gz``) written as a Hugging Face
``tokenizers`` file: NFC, whitespace runs to one space, strip, lower case; open_clip's split
pattern; start and end tokens around the text. open_clip also runs ``ftfy.fix_text`` and
unescapes HTML entities first, which this file does not: texts with mojibake or ``&amp;``
may get other ids. Needs ``cbir[clip]`` (torch, open-clip-torch).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

from cbir.backbones.torch_model import import_library
from cbir.errors import CbirError

#: open_clip's SimpleTokenizer split pattern (its special tokens first).
SPLIT = (
    r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (as open_clip's tokenizer has it)."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def open_clip_tokenizer_json(bpe_path: str | os.PathLike[str]) -> Any:
    """A ``tokenizers.Tokenizer`` giving open_clip's SimpleTokenizer ids (before padding)."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<start_of_text>", "<end_of_text>"]
    ids = {t: i for i, t in enumerate(vocab)}
    tok = Tokenizer(models.BPE(vocab=ids, merges=merges, end_of_word_suffix="</w>", fuse_unk=False))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.NFC(),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
            normalizers.Lowercase(),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    sot, eot = ids["<start_of_text>"], ids["<end_of_text>"]
    tok.post_processor = processors.TemplateProcessing(
        single="<start_of_text> $A <end_of_text>",
        special_tokens=[("<start_of_text>", sot), ("<end_of_text>", eot)],
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def _export(module: Any, args: tuple, path: Path, names: tuple[str, str]) -> None:
    import torch

    axes = {names[0]: {0: "n"}, names[1]: {0: "n"}}
    kw: dict[str, Any] = dict(
        input_names=[names[0]], output_names=[names[1]], dynamic_axes=axes, opset_version=17
    )
    try:
        torch.onnx.export(module, args, str(path), dynamo=False, **kw)
    except TypeError:  # a torch without the dynamo switch
        torch.onnx.export(module, args, str(path), **kw)


def export_open_clip(spec: str, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``out_dir/{image.onnx,text.onnx,tokenizer.json}`` for ``MODEL[:WEIGHTS]`` (as
    ``--backbone open_clip:MODEL[:WEIGHTS]`` opens it); returns ``out_dir``."""
    import onnx
    import torch

    from cbir.backbones.openclip import OpenClipBackbone

    open_clip = import_library("open_clip", f"open_clip:{spec}")
    bb = OpenClipBackbone(spec)
    tokenizer = open_clip.get_tokenizer(bb.model_name)
    bpe = getattr(open_clip.tokenizer, "default_bpe", lambda: None)()
    if type(tokenizer).__name__ != "SimpleTokenizer" or not bpe:
        raise CbirError(
            f"{bb.model_name} uses a {type(tokenizer).__name__}, not open_clip's CLIP BPE;"
            " export its towers yourself with its own tokenizer.json (docs/backbones.md)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, size = bb.model, bb.preprocess.size

    class Text(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, input_ids: Any) -> Any:
            return self.m.encode_text(input_ids)

    # nn.MultiheadAttention's fused fast path (eval, no grad) has no ONNX export
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        image = out / "image.onnx"
        _export(model.visual, (torch.zeros(2, 3, size, size),), image, ("pixels", "image_embeds"))
        _export(
            Text(), (tokenizer(["a photo", "x"]),), out / "text.onnx", ("input_ids", "text_embeds")
        )
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    m = onnx.load(str(image))
    for key, v in (("mean", bb.mean), ("std", bb.std)):
        m.metadata_props.add(key=key, value=",".join(repr(float(x)) for x in v))
    onnx.save(m, str(image))
    tok = open_clip_tokenizer_json(bpe)
    tok.save(str(out / "tokenizer.json"))
    return out
