"""Graph rewrites applied when an exported ONNX model is opened (the file is never changed).

`reassociate_bin_products`: the DCC scores each keypoint against every bin as `feats @ fc(bin_enc)^T`,
i.e. `MatMul(feats, Transpose(Add(MatMul(bin_enc, W), b)))`. Per detection that pushes all bins (448 for
RTMO-s) through the S x C weight, then multiplies by K = 17 keypoint features. The same value is
`(feats @ W^T) @ bin_enc^T + feats @ b`, which pushes only the K features through the weight: about a third
of the DCC's work per detection, the part of the graph whose cost grows with the crowd. Equal up to float
rounding, for rtmo's graphs and mmdeploy's alike (both trace the same expression). Runtimes such as ONNX
Runtime do not reorder a matmul chain themselves.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def reassociate_bin_products(model: Any) -> int:
    """Rewrite, in place, every `MatMul(A, Transpose(Add(MatMul(E, W), b)))` with constant 2-D `W`, 1-D `b`
    and a last-two-axes transpose into `MatMul(MatMul(A, W^T), Transpose(E)) + MatMul(A, b[:, None])`.
    Returns how many products were rewritten (0 leaves the model as it was)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    consts = {i.name: i for i in graph.initializer}
    nodes = list(graph.node)  # indices, not the message objects, identify nodes below
    producer = {o: k for k, n in enumerate(nodes) for o in n.output}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for out in graph.output:
        uses[out.name] = uses.get(out.name, 0) + 1

    def only_use(name: str, op: str) -> int | None:
        k = producer.get(name)
        return k if k is not None and nodes[k].op_type == op and uses.get(name) == 1 else None

    replace: dict[int, list[Any]] = {}
    drop: set[int] = set()
    orphans: set[str] = set()
    for k_outer, outer in enumerate(nodes):
        if outer.op_type != "MatMul" or len(outer.input) != 2:
            continue
        feats, transposed = outer.input
        k_tr = only_use(transposed, "Transpose")
        k_add = None if k_tr is None else only_use(nodes[k_tr].input[0], "Add")
        if k_add is None:
            continue
        tr, add = nodes[k_tr], nodes[k_add]
        perm = next((list(a.ints) for a in tr.attribute if a.name == "perm"), None)
        last_two_swapped = perm is not None and len(perm) >= 2 and perm == [
            *range(len(perm) - 2), len(perm) - 1, len(perm) - 2]
        if not last_two_swapped:
            continue
        bias = [i for i in add.input if i in consts]
        other = [i for i in add.input if i not in consts]
        if len(bias) != 1 or len(other) != 1:
            continue
        k_inner = only_use(other[0], "MatMul")
        if k_inner is None or nodes[k_inner].input[1] not in consts:
            continue
        inner = nodes[k_inner]
        w = numpy_helper.to_array(consts[inner.input[1]])
        b = numpy_helper.to_array(consts[bias[0]])
        if w.ndim != 2 or b.shape != (w.shape[1],):
            continue
        p = outer.name or outer.output[0]
        wt = numpy_helper.from_array(np.ascontiguousarray(w.T), f"{p}/reassoc/weight_t")
        bc = numpy_helper.from_array(np.ascontiguousarray(b.reshape(-1, 1)), f"{p}/reassoc/bias")
        graph.initializer.extend([wt, bc])

        def node(op: str, inputs: list[str], out: str, prefix: str = p, **attrs: Any) -> Any:
            name = f"{prefix}/reassoc/{out}"
            return helper.make_node(op, inputs, [name], name=name, **attrs)

        weighted = node("MatMul", [feats, wt.name], "weighted")
        enc_t = node("Transpose", [inner.input[0]], "enc_t", perm=perm)
        prod = node("MatMul", [weighted.output[0], enc_t.output[0]], "prod")
        offset = node("MatMul", [feats, bc.name], "offset")
        total = helper.make_node("Add", [prod.output[0], offset.output[0]], list(outer.output),
                                 name=f"{p}/reassoc/sum")
        replace[k_outer] = [weighted, enc_t, prod, offset, total]
        drop |= {k_inner, k_add, k_tr}
        orphans |= {inner.input[1], bias[0]}
    if not replace:
        return 0
    rewritten = []
    for k, node in enumerate(nodes):  # the new nodes take the outer MatMul's place, after all their inputs
        if k in replace:
            rewritten.extend(replace[k])
        elif k not in drop:
            rewritten.append(node)
    used = {i for n in rewritten for i in n.input}
    kept = [i for i in graph.initializer if i.name in used or i.name not in orphans]
    del graph.node[:]
    graph.node.extend(rewritten)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return len(replace)


def optimized_onnx(path: Any) -> bytes | None:
    """The serialized model at `path` with `reassociate_bin_products` applied, or None when there is
    nothing to rewrite or the `onnx` package is missing (then the file is opened as it is)."""
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.load(str(path))
    if model.ByteSize() > 2**31 - 2**20 or not reassociate_bin_products(model):
        return None
    return model.SerializeToString()
