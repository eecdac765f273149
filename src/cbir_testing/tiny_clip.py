"""A tiny CLIP-type model written as the ``onnx-clip:DIR`` layout, for tests.

The image tower averages the normalised pixels (``(n, 3, 32, 32)`` -> ``(n, 3)``) and
projects them to 8 dimensions with a seeded random matrix; the text tower sums the
embeddings of the tokens (masked by the attention mask). The embedding of each colour word
("red", "green", "blue", "yellow", ...) is the image embedding of a plain image of that
colour, so a text query ``red`` finds a red picture first when the plumbing is right:
tokenizer, text model, index space and the search. Other words get seeded random rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cbir.backbones.onnx_clip import CLIP_MEAN, CLIP_STD

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
WORDS = ["[PAD]", "[UNK]", *COLOURS, "a", "photo", "of", "cat", "astronaut", "house"]
DIM = 8
CONTEXT = 16


def colour_embedding(rgb: tuple[int, int, int], w: np.ndarray) -> np.ndarray:
    """The image tower's output for a plain image of colour ``rgb``."""
    x = (np.asarray(rgb, np.float64) / 255.0 - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)
    return (x @ w).astype(np.float32)


def write_tiny_clip(root: Path, seed: int = 0) -> Path:
    """Write ``image.onnx``, ``text.onnx`` and ``tokenizer.json`` under ``root``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1, (3, DIM)).astype(np.float32)
    image = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["pixel_values"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["mean_rgb"]),
            helper.make_node("MatMul", ["mean_rgb", "w"], ["image_embeds"]),
        ],
        "tiny_clip_image",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["n", 3, 32, 32])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["n", DIM])],
        [numpy_helper.from_array(w, "w")],
    )
    table = rng.normal(0, 1, (len(WORDS), DIM)).astype(np.float32)
    table[0] = 0.0
    for word, rgb in COLOURS.items():
        table[WORDS.index(word)] = colour_embedding(rgb, w)
    axes = numpy_helper.from_array(np.asarray([1], np.int64), "axes")
    text = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["tokens"], axis=0),
            helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["maskf", "minus1"], ["mask3"]),
            helper.make_node("Mul", ["tokens", "mask3"], ["kept"]),
            helper.make_node("ReduceSum", ["kept", "axes"], ["text_embeds"], keepdims=0),
        ],
        "tiny_clip_text",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["n", CONTEXT]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["n", CONTEXT]),
        ],
        [helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["n", DIM])],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.asarray([-1], np.int64), "minus1"),
            axes,
        ],
    )
    for graph, name in ((image, "image.onnx"), (text, "text.onnx")):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, root / name)
    tok = Tokenizer(models.WordLevel({w_: i for i, w_ in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    tok.save(str(root / "tokenizer.json"))
    return root


def write_colour_images(folder: Path) -> dict[str, Path]:
    """One plain 48 x 40 PNG per colour word: ``{word: path}``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for word, rgb in COLOURS.items():
        p = folder / f"plain-{word}.png"
        Image.new("RGB", (48, 40), rgb).save(p)
        out[word] = p
    return out
