"""Exact clean-ups of an exported graph that onnxruntime does not do itself (needs `onnx`).

The backbone's stride-2 convs use TensorFlow 'same' padding: one extra zero row and column at
the bottom and right, which torch can only write as an F.pad before the conv. Exported as is,
each Pad copies a large feature map and breaks onnxruntime's blocked (NCHWc) conv layout; as
the conv's own asymmetric `pads` (which ONNX allows) the backbone runs about a third faster
with bit-identical outputs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator


def fold_pads_into_convs(model: onnx.ModelProto) -> int:
    """Merge every constant zero Pad of the two spatial axes whose only reader is a Conv into
    that Conv's `pads`; then drop the nodes nothing reads any more. Returns the Pads folded."""
    graph = model.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    folded = 0
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        users = readers.get(pad.output[0], [])
        if len(users) != 1 or users[0].op_type != "Conv" or pad.output[0] in outputs:
            continue
        conv = users[0]
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        if mode != b"constant" or _attr(conv, "auto_pad", b"NOTSET") != b"NOTSET":
            continue
        fill = constant_value(model, pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(1)
        pads = constant_value(model, pad.input[1])
        if fill is None or np.any(fill != 0) or pads is None or len(pads) != 8 or np.any(pads < 0):
            continue
        if np.any(pads[[0, 1, 4, 5]] != 0):  # padding of the batch or channel axis
            continue
        top, left, bottom, right = _attr(conv, "pads", [0, 0, 0, 0])
        merged = [top + int(pads[2]), left + int(pads[3]), bottom + int(pads[6]), right + int(pads[7])]
        for a in [a for a in conv.attribute if a.name == "pads"]:
            conv.attribute.remove(a)
        conv.attribute.append(helper.make_attribute("pads", merged))
        conv.input[0] = pad.input[0]
        graph.node.remove(pad)
        folded += 1
    drop_unread_nodes(graph)
    return folded


def constant_value(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """The value of tensor `name` where it is computed from constants and initializers alone
    (evaluated by onnx's reference runtime); None where it depends on a graph input."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    if name in inits:
        return numpy_helper.to_array(inits[name])
    producer = {o: n for n in graph.node for o in n.output}
    nodes: list[onnx.NodeProto] = []
    used: set[str] = set()
    stack, seen = [name], set()
    while stack:
        tensor = stack.pop()
        if tensor in seen or tensor == "":
            continue
        seen.add(tensor)
        if tensor in inits:
            used.add(tensor)
            continue
        node = producer.get(tensor)
        if node is None:  # a graph input
            return None
        nodes.append(node)
        stack.extend(node.input)
    needed = {id(n) for n in nodes}
    order = [n for n in graph.node if id(n) in needed]  # keep the graph's topological order
    sub = helper.make_graph(
        order,
        "constant",
        [],
        [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)],
        [inits[i] for i in used],
    )
    return np.asarray(ReferenceEvaluator(helper.make_model(sub, opset_imports=model.opset_import)).run(None, {})[0])


def drop_unread_nodes(graph: onnx.GraphProto) -> int:
    """Remove nodes none of whose outputs is read (by a node or as a graph output); returns how many."""
    removed = 0
    while True:
        read = {o.name for o in graph.output} | {i for n in graph.node for i in n.input}
        dead = [n for n in graph.node if not any(o in read for o in n.output)]
        if not dead:
            return removed
        for n in dead:
            graph.node.remove(n)
        removed += len(dead)


def _attr(node: onnx.NodeProto, name: str, default):  # noqa: ANN001 - ints or bytes
    """An attribute's value (ints as a list), or `default`."""
    for a in node.attribute:
        if a.name == name:
            return list(a.ints) if a.type == onnx.AttributeProto.INTS else helper.get_attribute_value(a)
    return default
