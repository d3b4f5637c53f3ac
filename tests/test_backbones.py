"""vqflow.backbones: real packaged weights, stage maps, freezing, local files, wrapping, timm."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vqflow.backbones import (
    FeatureExtractor,
    create_backbone,
    list_backbones,
    packaged_weights_path,
    wrap_module,
)
from vqflow.errors import VQFlowError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
NATIVE_SIZE = {"efficientnet_lite0": 224, "efficientnet_lite2": 260}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def lite0() -> FeatureExtractor:
    return create_backbone("efficientnet_lite0")


def chelsea(size: int) -> torch.Tensor:
    """scikit-image's cat photo, resized and ImageNet-normalised, as a (1, 3, size, size) batch."""
    from skimage import data

    image = Image.fromarray(data.chelsea()).resize((size, size), Image.BILINEAR)
    pixels = (np.asarray(image, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)


def assert_close_to_max(ours: torch.Tensor, theirs: torch.Tensor, tol: float = 1e-4) -> None:
    """Same shape, and max |ours - theirs| <= tol * max |theirs| (float error of BN folding)."""
    assert ours.shape == theirs.shape
    scale = float(theirs.abs().max())
    err = float((ours - theirs).abs().max())
    assert err <= tol * scale, f"max abs diff {err:.3g} > {tol} * {scale:.3g}"


def package_taps(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The unmodified package network's output of the last block at each map size (4 deepest
    sizes): found by hooks and shapes, independently of vqflow's stride bookkeeping."""
    outputs: dict[int, torch.Tensor] = {}
    hooks = [
        block.register_forward_hook(lambda _m, _i, out, idx=idx: outputs.__setitem__(idx, out))
        for idx, block in enumerate(net._blocks)
    ]
    with torch.no_grad():
        net.eval().extract_features(x)
    for h in hooks:
        h.remove()
    last_at_size: dict[tuple[int, int], int] = {}
    for idx in sorted(outputs):
        last_at_size[tuple(outputs[idx].shape[-2:])] = idx
    sizes = sorted(last_at_size, key=lambda hw: hw[0] * hw[1], reverse=True)[-4:]
    return [outputs[last_at_size[hw]] for hw in sizes]


def random_package_net_and_backbone(name: str, tmp_path, wrap: bool = False, seed: int = 1):
    """A seeded random package network (dynamic padding) and vqflow's backbone loaded from its
    state dict saved to a file (optionally wrapped under 'state_dict')."""
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(seed)
    net = EfficientNet.from_name(name.replace("_", "-"), image_size=None).eval()
    state = net.state_dict()
    for key, value in state.items():  # random BN statistics too, so folding really matters
        if key.endswith("running_var"):
            value.uniform_(0.5, 2.0)
        elif key.endswith("running_mean"):
            value.normal_(0.0, 0.5)
    path = tmp_path / f"{name}_random.pt"
    torch.save({"state_dict": state} if wrap else state, path)
    return net, create_backbone(name, weights=str(path))


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
@pytest.mark.parametrize("pretrained", [True, False])
def test_classifier_sees_a_cat_only_with_the_packaged_weights(name, pretrained):
    torch.manual_seed(0)
    backbone = create_backbone(name, pretrained=pretrained)
    top1 = int(backbone.classify(chelsea(NATIVE_SIZE[name])).argmax())
    assert (top1 in IMAGENET_CATS) == pretrained, f"top-1 class {top1}"


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_stage_maps_equal_the_upstream_blocks_at_native_size(name):
    """Our taps equal hooks on the unmodified package model (static padding) at its native size."""
    from efficientnet_lite_pytorch import EfficientNet

    backbone = create_backbone(name)
    reference = EfficientNet.from_name(name.replace("_", "-"))
    reference.load_state_dict(torch.load(packaged_weights_path(name), weights_only=True))
    reference.eval()
    # Independent stride bookkeeping: the last block at each feature-map size.
    x = chelsea(NATIVE_SIZE[name])
    outputs: dict[int, torch.Tensor] = {}
    hooks = [
        block.register_forward_hook(lambda _m, _i, out, idx=idx: outputs.__setitem__(idx, out))
        for idx, block in enumerate(reference._blocks)
    ]
    with torch.no_grad():
        reference.extract_features(x)
    for h in hooks:
        h.remove()
    last_at_size: dict[int, int] = {}
    for idx in sorted(outputs):
        last_at_size[outputs[idx].shape[-1]] = idx
    expected = [outputs[last_at_size[s]] for s in sorted(last_at_size, reverse=True)[-4:]]
    maps = backbone(x)
    assert len(maps) == 4
    for ours, theirs in zip(maps, expected):
        assert_close_to_max(ours, theirs)  # BN folding changes float rounding, not the maps


def test_lite0_channels_are_the_documented_ones(lite0):
    assert lite0.channels == (24, 40, 112, 320)
    assert lite0.strides == (4, 8, 16, 32)
    assert lite0.name == "efficientnet_lite0"


@pytest.mark.parametrize("size", [256, 384])
@pytest.mark.parametrize("name", list_backbones())
def test_four_maps_with_expected_shapes(name, size, lite0):
    backbone = lite0 if name == "efficientnet_lite0" else create_backbone(name, pretrained=False)
    maps = backbone(torch.randn(1, 3, size, size))
    assert [tuple(m.shape) for m in maps] == [
        (1, c, size // s, size // s) for c, s in zip(backbone.channels, (4, 8, 16, 32))
    ]


def test_frozen_in_eval_after_train_and_no_grad(lite0):
    returned = lite0.train()
    assert returned is lite0
    assert not any(m.training for m in lite0.modules())
    assert not any(p.requires_grad for p in lite0.parameters())
    parent = nn.Sequential(lite0)
    parent.train()
    assert not lite0.training
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    maps = lite0(x)
    assert all(not m.requires_grad and m.grad_fn is None for m in maps)
    # the maps are ordinary tensors usable in a later autograd graph (not inference tensors)
    w = torch.ones(1, requires_grad=True)
    (maps[0] * w).sum().backward()
    assert w.grad is not None


def test_eval_batchnorm_makes_samples_independent(lite0):
    """With frozen BN statistics, a sample's maps do not depend on the rest of the batch."""
    a, b = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    alone = lite0(a)
    together = lite0(torch.cat([a, b]))
    for m1, m2 in zip(alone, together):
        torch.testing.assert_close(m1[0], m2[0], rtol=1e-4, atol=1e-5)


def test_local_weights_file_round_trip(tmp_path, lite0):
    packaged = torch.load(packaged_weights_path("efficientnet_lite0"), weights_only=True)
    path = tmp_path / "lite0.pt"
    torch.save(packaged, path)
    local = create_backbone("efficientnet_lite0", weights=str(path), pretrained=False)
    for (key, ours), theirs in zip(local.state_dict().items(), lite0.state_dict().values()):
        assert torch.equal(ours, theirs), key
    x = torch.randn(1, 3, 64, 64)
    for m1, m2 in zip(local(x), lite0(x)):
        assert torch.equal(m1, m2)


def test_local_weights_file_is_really_used(tmp_path, lite0):
    """A random package state dict (wrapped form) gives that network's maps, not ImageNet's."""
    net, backbone = random_package_net_and_backbone("efficientnet_lite0", tmp_path, wrap=True)
    x = torch.randn(1, 3, 64, 64)
    expected = package_taps(net, x)
    for ours, theirs, imagenet in zip(backbone(x), expected, lite0(x)):
        assert_close_to_max(ours, theirs)
        assert not torch.allclose(ours, imagenet, atol=1e-2)


def test_random_init_is_deterministic_under_a_seed():
    torch.manual_seed(3)
    a = create_backbone("efficientnet_lite0", pretrained=False)
    torch.manual_seed(3)
    b = create_backbone("efficientnet_lite0", pretrained=False)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), ka


def test_broken_missing_and_foreign_weights_files(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a torch file")
    foreign = tmp_path / "foreign.pt"
    torch.save(nn.Linear(3, 4).state_dict(), foreign)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(packaged_weights_path("efficientnet_lite0"), "rb").read()[:5000])
    for path in (garbage, foreign, truncated, tmp_path / "missing.pt"):
        with pytest.raises(VQFlowError) as info:
            create_backbone("efficientnet_lite0", weights=str(path))
        message = str(info.value)
        assert str(path) in message and "\n" not in message


class TinyPyramid(nn.Module):
    """Four conv stages at strides 4, 8, 16, 32 (a stand-in for a user network)."""

    def __init__(self, as_dict: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 4, stride=4)
        self.stages = nn.ModuleList(nn.Conv2d(4 + 2 * i, 6 + 2 * i, 2, stride=2) for i in range(3))
        self.bn = nn.BatchNorm2d(4)
        self.as_dict = as_dict

    def forward(self, x):
        x = self.bn(self.stem(x))
        maps = [x]
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return {f"f{i}": m for i, m in enumerate(maps)} if self.as_dict else maps


@pytest.mark.parametrize("as_dict", [False, True])
def test_wrapped_module_infers_channels_and_matches_direct_call(as_dict):
    torch.manual_seed(0)
    module = TinyPyramid(as_dict)
    backbone = create_backbone(module)
    assert isinstance(backbone, FeatureExtractor)
    assert backbone.channels == (4, 6, 8, 10)
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not module.bn.training
    x = torch.randn(2, 3, 64, 64)
    direct = module(x)
    direct = list(direct.values()) if as_dict else direct
    for ours, theirs in zip(backbone(x), direct):
        assert torch.equal(ours, theirs)


def test_wrapped_module_with_features_fn_and_wrong_strides():
    class Five(TinyPyramid):
        def forward(self, x):
            return [x[:, :, ::2, ::2]] + super().forward(x)  # an extra stride-2 map first

    with pytest.raises(VQFlowError, match="strides"):
        create_backbone(Five())
    backbone = wrap_module(Five(), features_fn=lambda m, x: m(x)[1:])
    assert backbone.channels == (4, 6, 8, 10)
    with pytest.raises(VQFlowError, match="4 feature maps"):
        create_backbone(nn.Conv2d(3, 4, 3))  # returns one tensor


def test_wrapped_module_loads_a_local_state_dict(tmp_path):
    torch.manual_seed(0)
    source = TinyPyramid()
    path = tmp_path / "tiny.pt"
    torch.save(source.state_dict(), path)
    backbone = create_backbone(TinyPyramid(), weights=str(path))
    x = torch.randn(1, 3, 32, 32)
    for ours, theirs in zip(backbone(x), source.eval()(x)):
        torch.testing.assert_close(ours, theirs)


def test_timm_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    for name in ("convnextv2_base", "timm:wide_resnet50_2"):
        with pytest.raises(VQFlowError) as info:
            create_backbone(name)
        assert str(info.value).startswith(f"backbone '{name}' needs timm: pip install 'vqflow[timm]'")


class FakeFeatureInfo:
    def __init__(self, reductions, channels):
        self._reductions, self._channels = reductions, channels

    def reduction(self):
        return list(self._reductions)

    def channels(self):
        return list(self._channels)


class FakeFeatureNet(nn.Module):
    """Mimics a timm features_only ResNet: five outputs at strides 2, 4, 8, 16, 32."""

    def __init__(self):
        super().__init__()
        self.feature_info = FakeFeatureInfo([2, 4, 8, 16, 32], [64, 256, 512, 1024, 2048])
        self.convs = nn.ModuleList(nn.Conv2d(3, c, 1) for c in self.feature_info.channels())

    def forward(self, x):
        return [conv(x[:, :, ::r, ::r]) for conv, r in zip(self.convs, self.feature_info.reduction())]


@pytest.fixture
def fake_timm(monkeypatch):
    calls = []
    timm = types.ModuleType("timm")

    def create_model(name, pretrained=False, features_only=False, **kwargs):
        calls.append({"name": name, "pretrained": pretrained, "features_only": features_only, **kwargs})
        if pretrained and "pretrained_cfg_overlay" not in kwargs:
            raise OSError("Could not reach huggingface.co\nconnection refused")
        return FakeFeatureNet()

    timm.create_model = create_model
    timm.is_model = lambda name: name in {"wide_resnet50_2", "convnextv2_base"}
    monkeypatch.setitem(sys.modules, "timm", timm)
    return calls


def test_timm_backbone_picks_strides_4_to_32(fake_timm):
    backbone = create_backbone("wide_resnet50_2", pretrained=False)
    assert fake_timm[-1]["features_only"] is True
    assert backbone.channels == (256, 512, 1024, 2048)
    maps = backbone(torch.randn(1, 3, 64, 64))
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 2]
    assert [m.shape[1] for m in maps] == [256, 512, 1024, 2048]
    assert not any(p.requires_grad for p in backbone.parameters())


def test_timm_download_failure_and_unknown_name(fake_timm, tmp_path):
    with pytest.raises(VQFlowError) as info:
        create_backbone("timm:convnextv2_base")
    message = str(info.value)
    assert "--backbone-weights FILE" in message and "efficientnet_lite0" in message
    assert "\n" not in message
    with pytest.raises(VQFlowError, match="unknown backbone 'efficientnet_lit0'.*efficientnet_lite0"):
        create_backbone("efficientnet_lit0")
    path = tmp_path / "wrn.pt"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    create_backbone("wide_resnet50_2", weights=str(path))
    assert fake_timm[-1]["pretrained_cfg_overlay"] == {"file": str(path)}


@pytest.mark.parametrize("size", [(256, 256), (97, 130)])
@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_fast_extractor_matches_the_package_network(name, size, tmp_path):
    """Folded BN + static padding + channels_last give the package's maps at any input size:
    Lite0 with its ImageNet weights, Lite2 with seeded random weights (and BN statistics)."""
    if name == "efficientnet_lite0":
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
        net.load_state_dict(torch.load(packaged_weights_path(name), weights_only=True))
        backbone = create_backbone(name)
    else:
        net, backbone = random_package_net_and_backbone(name, tmp_path)
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size)
    maps, expected = backbone(x), package_taps(net, x)
    assert len(maps) == 4
    for ours, theirs, stride in zip(maps, expected, (4, 8, 16, 32)):
        assert ours.shape[-2:] == (-(-size[0] // stride), -(-size[1] // stride))
        assert ours.is_contiguous()
        assert_close_to_max(ours, theirs)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_traced_at_a_fixed_size_runs_any_batch(lite0):
    """The legacy (TorchScript) ONNX exporter traces like this: fixed H, W, dynamic batch."""
    traced = torch.jit.trace(lite0, torch.randn(2, 3, 96, 64), check_trace=False)
    x = torch.randn(3, 3, 96, 64)
    for ours, eager in zip(traced(x), lite0(x)):
        torch.testing.assert_close(ours, eager, rtol=0, atol=0)


def backbones_import_graph(folder) -> dict[str, set[str]]:
    """Module -> modules of the same package it imports anywhere (lazy imports included);
    `from <package> import Name` of a non-module counts as importing `__init__`."""
    import ast

    package = "vqflow.backbones"
    modules = {p.stem for p in Path(folder).glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in Path(folder).glob("*.py"):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: 3 - node.level] + ([base] if base else []))
                if base == package:
                    targets = [f"{base}.{a.name}" if a.name in modules else f"{base}.__init__" for a in node.names]
                else:
                    targets = [base]
            else:
                continue
            for target in targets:
                if target.startswith(package + "."):
                    deps.add(target[len(package) + 1 :].split(".")[0])
        graph[path.stem] = deps - {path.stem}
    return graph


def find_import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle [a, b, ..., a] of the graph, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_inside_backbones():
    import vqflow.backbones

    folder = Path(vqflow.backbones.__file__).parent
    graph = backbones_import_graph(folder)
    assert {"registry", "factory", "timm_backbone", "efficientnet_lite"} <= set(graph)
    assert graph["registry"] <= {"base"}, "the registry must stay a leaf"
    assert find_import_cycle(graph) is None, find_import_cycle(graph)


def test_import_cycle_check_sees_a_lazy_cycle(tmp_path):
    """The checker itself: a function-level import back (the old registry's pattern) is found."""
    (tmp_path / "registry.py").write_text(
        "def create():\n    from vqflow.backbones.timm_backbone import make\n    return make()\n"
    )
    (tmp_path / "timm_backbone.py").write_text("from vqflow.backbones.registry import create\n")
    (tmp_path / "base.py").write_text("from . import registry\n")
    graph = backbones_import_graph(tmp_path)
    assert graph == {"registry": {"timm_backbone"}, "timm_backbone": {"registry"}, "base": {"registry"}}
    assert find_import_cycle(graph) in (
        ["registry", "timm_backbone", "registry"],
        ["timm_backbone", "registry", "timm_backbone"],
    )
