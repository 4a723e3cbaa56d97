"""`rtmo.export.optimize` on small hand-built graphs: each rewrite gives numpy's value of the original
expression, and graphs that do not match the pattern are left alone. (The DCC graphs of rtmo's and
mmdeploy's files: tests/test_runtime.py.)"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rtmo.export.optimize import reassociate_bin_products

RNG = np.random.default_rng(0)
N, K, C, BINS, S = 3, 5, 8, 11, 6
W = RNG.standard_normal((S, C)).astype(np.float32)
B = RNG.standard_normal(C).astype(np.float32)


def _graph(sine: bool, bias_shape: tuple[int, ...] = (C,), perm: tuple[int, ...] = (0, 2, 1)):
    """feats (N,K,C) @ Transpose(Add(MatMul(E, W), b)); E = the `enc` input or Concat(Cos(F), Sin(F))."""
    nodes = []
    if sine:
        nodes += [helper.make_node("Cos", ["freq"], ["c"]), helper.make_node("Sin", ["freq"], ["s"]),
                  helper.make_node("Concat", ["c", "s"], ["enc"], axis=-1)]
        inputs = [helper.make_tensor_value_info("freq", TensorProto.FLOAT, [N, BINS, S // 2])]
    else:
        inputs = [helper.make_tensor_value_info("enc", TensorProto.FLOAT, [N, BINS, S])]
    nodes += [helper.make_node("MatMul", ["enc", "W"], ["y"]), helper.make_node("Add", ["b", "y"], ["z"]),
              helper.make_node("Transpose", ["z"], ["zt"], perm=list(perm)),
              helper.make_node("MatMul", ["feats", "zt"], ["out"])]
    inputs.append(helper.make_tensor_value_info("feats", TensorProto.FLOAT, [N, K, C]))
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B.reshape(bias_shape), "b")]
    return helper.make_model(helper.make_graph(nodes, "g", inputs, [out], inits),
                             opset_imports=[helper.make_opsetid("", 17)])


def _run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


@pytest.mark.parametrize("sine", [False, True])
def test_rewrite_gives_the_original_expression(sine):
    feats = RNG.standard_normal((N, K, C)).astype(np.float32)
    if sine:
        freq = RNG.uniform(-20, 20, (N, BINS, S // 2)).astype(np.float32)
        feeds, enc = {"freq": freq, "feats": feats}, np.concatenate([np.cos(freq), np.sin(freq)], -1)
    else:
        enc = RNG.standard_normal((N, BINS, S)).astype(np.float32)
        feeds = {"enc": enc, "feats": feats}
    want = feats.astype(np.float64) @ np.swapaxes(enc.astype(np.float64) @ W + B, 1, 2)
    model = _graph(sine)
    assert reassociate_bin_products(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ("Concat" not in ops) if sine else (ops.count("MatMul") == 3)
    assert {i.name for i in model.graph.initializer}.isdisjoint({"W", "b"})  # replaced, not left behind
    np.testing.assert_allclose(_run(model, feeds), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("change", ["bias_2d", "perm"])
def test_other_shapes_are_left_alone(change):
    model = _graph(False, bias_shape=(1, C)) if change == "bias_2d" else _graph(False, perm=(1, 0, 2))
    before = model.SerializeToString()
    assert reassociate_bin_products(model) == 0
    assert model.SerializeToString() == before
