"""EfficientNet-Lite0 written as an ONNX graph with ``onnx.helper``, from a state dict.

No torch: the weights are read by :mod:`cbir.backbones.torch_checkpoint` and the graph is
the network of Tan & Le ("EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019) in
its Lite form (ReLU6, no squeeze-and-excitation, fixed stem and head), laid out as
``efficientnet-lite-pytorch`` builds it: stem conv 3x3/2, 16 MBConv blocks (expand 1x1,
depthwise kxk, project 1x1; a residual when stride 1 and the widths match), head conv 1x1,
global average pool and the ImageNet classifier. Batch norms are folded into the
convolutions (as ``torch.onnx.export`` does in eval mode), and the package's TensorFlow-
style "SAME" padding, fixed at its 224 px design size, becomes each Conv's ``pads``.

Input and outputs are those of the torch export: ``images`` uint8 ``(n, size, size, 3)``
scaled inside the graph (``(x - mean) / std``), ``features`` ``(n, 1280)`` and ``logits``
``(n, 1000)``. Node names follow the torch export's (``/_conv_head/Conv``, ``/ReduceMean``,
``/_fc/Gemm``) so that tools keyed by them (int8 quantisation) work on either file.
With ``feature_map`` the graph has a third output, ``feature_map`` ``(n, 1280, h, w)``: the
head's activations before pooling, for retrieval pooling (:mod:`cbir.backbones.pooling`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

#: Stride of each of the 16 blocks (the weights give every other shape).
STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1)
BN_EPS = 1e-3
IR_VERSION = 8  # what torch 2.x writes at opset 17; onnxruntime >= 1.14 reads it


def same_pads(kernel: int, stride: int) -> list[int]:
    """ONNX ``pads`` of TensorFlow "SAME" padding at an even input size."""
    total = kernel - stride  # stride 1: k - 1; stride 2 (even side): k - 2
    lo, hi = total // 2, total - total // 2
    return [lo, lo, hi, hi]


def fold_bn(w: np.ndarray, sd: Mapping[str, np.ndarray], bn: str) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight and bias with the batch norm ``bn`` (eval mode) folded in."""
    scale = sd[f"{bn}.weight"] / np.sqrt(sd[f"{bn}.running_var"] + np.float32(BN_EPS))
    wf = (w * scale.reshape(-1, 1, 1, 1)).astype(np.float32)
    bf = (sd[f"{bn}.bias"] - sd[f"{bn}.running_mean"] * scale).astype(np.float32)
    return wf, bf


def build_model(
    sd: Mapping[str, np.ndarray],
    size: int,
    mean: float,
    std: float,
    opset: int = 17,
    feature_map: bool = False,
):
    """The ONNX ``ModelProto`` of EfficientNet-Lite0 with state dict ``sd`` at ``size`` px
    (with ``feature_map``: the last feature map as a third output)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes: list = []
    inits: list = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    zero = const("clip_min", np.array(0.0, np.float32))
    six = const("clip_max", np.array(6.0, np.float32))

    def conv(x: str, scope: str, conv_key: str, bn_key: str, stride: int, relu6: str | None):
        w = np.asarray(sd[f"{conv_key}.weight"], np.float32)
        wf, bf = fold_bn(w, sd, bn_key)
        k = int(w.shape[-1])
        group = int(w.shape[0]) if w.shape[1] == 1 and w.shape[0] > 1 else 1
        y = f"{scope}/Conv_output_0"
        nodes.append(
            helper.make_node(
                "Conv",
                [x, const(f"{conv_key}.weight", wf), const(f"{conv_key}.bias", bf)],
                [y],
                name=f"{scope}/Conv",
                dilations=[1, 1],
                group=group,
                kernel_shape=[k, k],
                pads=same_pads(k, stride) if k > 1 else [0, 0, 0, 0],
                strides=[stride, stride],
            )
        )
        if relu6 is None:
            return y
        out = f"{relu6}/Clip_output_0"
        nodes.append(helper.make_node("Clip", [y, zero, six], [out], name=f"{relu6}/Clip"))
        return out

    m = const("pixel_mean", np.array(mean, np.float32))
    s = const("pixel_scale", np.array(1.0 / std, np.float32))
    nodes += [  # uint8 NHWC -> float NCHW, scaled
        helper.make_node("Transpose", ["images"], ["/T"], "/Transpose", perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["/T"], ["/Cast_output_0"], "/Cast", to=TensorProto.FLOAT),
        helper.make_node("Sub", ["/Cast_output_0", m], ["/Sub_output_0"], "/Sub"),
        helper.make_node("Mul", ["/Sub_output_0", s], ["/Mul_output_0"], "/Mul"),
    ]
    x = conv("/Mul_output_0", "/_conv_stem", "_conv_stem", "_bn0", 2, "/_swish")
    for i, stride in enumerate(STRIDES):
        b = f"_blocks.{i}"
        inp = x
        act = 0
        if f"{b}._expand_conv.weight" in sd:
            x = conv(x, f"/{b}/_expand_conv", f"{b}._expand_conv", f"{b}._bn0", 1, f"/{b}/_swish")
            act = 1
        dw = f"/{b}/_swish" + (f"_{act}" if act else "")
        x = conv(x, f"/{b}/_depthwise_conv", f"{b}._depthwise_conv", f"{b}._bn1", stride, dw)
        x = conv(x, f"/{b}/_project_conv", f"{b}._project_conv", f"{b}._bn2", 1, None)
        if act:
            c_in = sd[f"{b}._expand_conv.weight"].shape[1]
        else:
            c_in = sd[f"{b}._depthwise_conv.weight"].shape[0]
        if stride == 1 and c_in == sd[f"{b}._project_conv.weight"].shape[0]:
            out = f"/{b}/Add_output_0"
            nodes.append(helper.make_node("Add", [x, inp], [out], name=f"/{b}/Add"))
            x = out
    x = conv(x, "/_conv_head", "_conv_head", "_bn1", 1, "/_swish_1")
    fmap = x
    nodes.append(
        helper.make_node("ReduceMean", [x], ["features"], "/ReduceMean", axes=[2, 3], keepdims=0)
    )
    fc_w = const("_fc.weight", np.asarray(sd["_fc.weight"], np.float32))
    fc_b = const("_fc.bias", np.asarray(sd["_fc.bias"], np.float32))
    nodes.append(
        helper.make_node(
            "Gemm", ["features", fc_w, fc_b], ["logits"], "/_fc/Gemm", alpha=1.0, beta=1.0, transB=1
        )
    )
    dim = int(sd["_conv_head.weight"].shape[0])
    n_classes = int(sd["_fc.weight"].shape[0])
    outputs = [
        helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", dim]),
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", n_classes]),
    ]
    if feature_map:
        nodes.append(helper.make_node("Identity", [fmap], ["feature_map"], "/FeatureMap"))
        outputs.append(
            helper.make_tensor_value_info("feature_map", TensorProto.FLOAT, ["n", dim, "h", "w"])
        )
    graph = helper.make_graph(
        nodes,
        "efficientnet-lite0",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["n", size, size, 3])],
        outputs,
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="cbir"
    )
    model.ir_version = IR_VERSION
    return model


def export_bytes(
    sd: Mapping[str, np.ndarray],
    size: int,
    mean: float,
    std: float,
    opset: int = 17,
    feature_map: bool = False,
) -> bytes:
    """The serialised, checked ONNX model of :func:`build_model`."""
    import onnx

    model = build_model(sd, size, mean, std, opset, feature_map)
    onnx.checker.check_model(model)
    return model.SerializeToString()
