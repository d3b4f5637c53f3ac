"""The exported graph's clean-up: TensorFlow 'same' pads folded into convs, exactly."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from vqflow.export.passes import constant_value, drop_unread_nodes, fold_pads_into_convs  # noqa: E402


class PadConv(nn.Module):
    """F.pad(x, pad, value=fill) then a stride-2 3x3 conv: what a 'same' stride-2 conv exports as."""

    def __init__(self, pad: list[int], fill: float = 0.0, padding: int = 0) -> None:
        super().__init__()
        self.pad, self.fill = pad, fill
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad, value=self.fill))


def _export(module: nn.Module, path: Path, x: torch.Tensor) -> onnx.ModelProto:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (x,),
            str(path),
            input_names=["x"],
            dynamic_axes={"x": {0: "b"}},
            opset_version=17,
            dynamo=False,
        )
    return onnx.load(str(path))


def _run(model: onnx.ModelProto, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.numpy()})[0]


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


@pytest.mark.parametrize(("pad", "padding"), [([0, 1, 0, 1], 0), ([0, 1, 0, 1], 1), ([1, 2, 0, 3], 0)])
def test_zero_pads_of_height_and_width_become_the_convs_own(tmp_path, pad, padding):
    torch.manual_seed(0)
    module = PadConv(pad, padding=padding)
    x = torch.randn(2, 3, 16, 18)
    model = _export(module, tmp_path / "m.onnx", x)
    assert "Pad" in _ops(model)
    unfolded = _run(model, x)
    assert fold_pads_into_convs(model) == 1
    onnx.checker.check_model(model)
    assert "Pad" not in _ops(model)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    left, right, top, bottom = pad
    pads = next(list(a.ints) for a in conv.attribute if a.name == "pads")
    assert pads == [top + padding, left + padding, bottom + padding, right + padding]
    folded = _run(model, x)
    np.testing.assert_allclose(folded, unfolded, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(folded, module(x).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["nonzero fill", "channel axis", "negative (a crop)"])
def test_pads_that_are_not_a_convs_zero_border_stay(tmp_path, case):
    class ChannelPad(PadConv):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(F.pad(x, [0, 0, 0, 0, 0, 1])[:, :3] + F.pad(x, [0, 0, 0, 0, 1, 0])[:, 1:])

    module = {
        "nonzero fill": PadConv([0, 1, 0, 1], fill=1.5),
        "channel axis": ChannelPad([0, 0, 0, 0]),
        "negative (a crop)": PadConv([0, -1, 0, -1]),
    }[case]
    x = torch.randn(1, 3, 16, 16)
    model = _export(module, tmp_path / "m.onnx", x)
    before = _ops(model).count("Pad")
    assert before >= 1
    assert fold_pads_into_convs(model) == 0
    assert _ops(model).count("Pad") == before
    with torch.no_grad():
        np.testing.assert_allclose(_run(model, x), module(x).numpy(), rtol=1e-5, atol=1e-5)


def test_constant_value_evaluates_constant_subgraphs_only():
    one = onnx.helper.make_node("Constant", [], ["one"], value=onnx.helper.make_tensor("v", 7, [2], [1, 2]))
    twice = onnx.helper.make_node("Add", ["one", "one"], ["two"])
    mixed = onnx.helper.make_node("Add", ["two", "x"], ["y"])
    graph = onnx.helper.make_graph(
        [one, twice, mixed],
        "g",
        [onnx.helper.make_tensor_value_info("x", 7, [2])],
        [onnx.helper.make_tensor_value_info("y", 7, [2])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    np.testing.assert_array_equal(constant_value(model, "two"), [2, 4])
    assert constant_value(model, "y") is None  # depends on the input x


def test_drop_unread_nodes_keeps_what_reaches_an_output():
    nodes = [
        onnx.helper.make_node("Relu", ["x"], ["a"]),
        onnx.helper.make_node("Neg", ["a"], ["unused"]),
        onnx.helper.make_node("Abs", ["unused"], ["unused2"]),
        onnx.helper.make_node("Sigmoid", ["a"], ["y"]),
    ]
    info = [onnx.helper.make_tensor_value_info(n, 1, [2]) for n in ("x", "y")]
    graph = onnx.helper.make_graph(nodes, "g", info[:1], info[1:])
    assert drop_unread_nodes(graph) == 2
    assert [n.op_type for n in graph.node] == ["Relu", "Sigmoid"]


def test_an_exported_run_has_no_pad_before_a_conv(tiny_run, tmp_path):
    """The backbone's stride-2 'same' pads are folded in a real export (parity: test_export.py)."""
    from vqflow.export.onnx import export_onnx

    path, _ = export_onnx(tiny_run, tmp_path / "model.onnx")
    model = onnx.load(str(path))
    readers = {i: n.op_type for n in model.graph.node for i in n.input}
    assert "Conv" in _ops(model)
    assert not [n for n in model.graph.node if n.op_type == "Pad" and readers.get(n.output[0]) == "Conv"]
