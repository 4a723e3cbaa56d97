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
    and a last-two-axes transpose into `MatMul(MatMul(A, W^T), Transpose(E)) + MatMul(A, b[:, None])`; when
    E is the sine encoding `Concat(Cos(F), Sin(F))`, into one product per half, `(A W_cos^T) cos(F^T) +
    (A W_sin^T) sin(F^T)`, so the encoding is never materialised. Returns how many products were rewritten
    (0 leaves the model as it was)."""
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
        bc = numpy_helper.from_array(np.ascontiguousarray(b.reshape(-1, 1)), f"{p}/reassoc/bias")
        graph.initializer.append(bc)

        def node(op: str, inputs: list[str], out: str, prefix: str = p, **attrs: Any) -> Any:
            name = f"{prefix}/reassoc/{out}"
            return helper.make_node(op, inputs, [name], name=name, **attrs)

        offset = node("MatMul", [feats, bc.name], "offset")
        halves = _sine_halves(nodes, inner.input[0], len(perm), w.shape[0], only_use)
        if halves is None:  # any encoding: one product with its transpose
            wt = numpy_helper.from_array(np.ascontiguousarray(w.T), f"{p}/reassoc/weight_t")
            graph.initializer.append(wt)
            weighted = node("MatMul", [feats, wt.name], "weighted")
            enc_t = node("Transpose", [inner.input[0]], "enc_t", perm=perm)
            prod = node("MatMul", [weighted.output[0], enc_t.output[0]], "prod")
            new_nodes = [weighted, enc_t, prod]
        else:  # Concat(Cos(F), Sin(F)): one product per half, the (n, bins, S) encoding never built
            encoders, freq = halves
            drop |= {producer[inner.input[0]], *encoders}
            half = w.shape[0] // 2
            freq_t = node("Transpose", [freq], "freq_t", perm=perm)
            new_nodes, parts = [freq_t], []
            for j, k_enc in enumerate(encoders):
                wj = numpy_helper.from_array(np.ascontiguousarray(w.T[:, j * half:(j + 1) * half]),
                                             f"{p}/reassoc/weight_t{j}")
                graph.initializer.append(wj)
                weighted = node("MatMul", [feats, wj.name], f"weighted{j}")
                enc_t = node(nodes[k_enc].op_type, [freq_t.output[0]], f"enc{j}_t")
                part = node("MatMul", [weighted.output[0], enc_t.output[0]], f"prod{j}")
                new_nodes += [weighted, enc_t, part]
                parts.append(part.output[0])
            prod = node("Add", parts, "prod")
            new_nodes.append(prod)
        total = helper.make_node("Add", [prod.output[0], offset.output[0]], list(outer.output),
                                 name=f"{p}/reassoc/sum")
        replace[k_outer] = [*new_nodes, offset, total]
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


def _sine_halves(nodes: list[Any], enc: str, rank: int, width: int, only_use: Any
                 ) -> tuple[list[int], str] | None:
    """When `enc` (`width` wide) is Concat(Cos(F), Sin(F)) (either order) on the last axis, each part used
    only there: the Cos/Sin nodes' indices in concatenation order and F; else None."""
    k = only_use(enc, "Concat")
    if k is None or width % 2 or len(nodes[k].input) != 2:
        return None
    axis = next((a.i for a in nodes[k].attribute if a.name == "axis"), None)
    if axis not in (-1, rank - 1):
        return None
    encoders = []
    for name in nodes[k].input:
        j = only_use(name, "Cos")
        encoders.append(only_use(name, "Sin") if j is None else j)
    if None in encoders or sorted(nodes[j].op_type for j in encoders) != ["Cos", "Sin"]:
        return None
    freq = {nodes[j].input[0] for j in encoders}
    return (encoders, freq.pop()) if len(freq) == 1 else None


def optimized_onnx(path: Any) -> bytes | None:
    """The serialized model at `path` with `reassociate_bin_products` applied, or None when there is
    nothing to rewrite or the `onnx` package is missing (then the file is opened as it is)."""
    try:
        import onnx
    except ImportError:
        return None
    try:
        model = onnx.load(str(path))
    except Exception:  # noqa: BLE001 - not readable here: the runtime opens (or refuses) the file itself
        return None
    if model.ByteSize() > 2**31 - 2**20 or not reassociate_bin_products(model):
        return None
    return model.SerializeToString()
