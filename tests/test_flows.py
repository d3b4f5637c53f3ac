"""Flow blocks: exact inverse, log-det against autograd's Jacobian, gradients, state, determinism, cost."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from vqflow.errors import VQFlowError
from vqflow.model.flows import (
    AllInOneCoupling,
    ChannelLayerNorm,
    ConditionalFlow,
    CouplingSubnet,
    FusionCoupling,
    count_parameters,
)

B = 2


@dataclass
class Case:
    """A block type with tiny input shapes; `sizes` are per scale (one entry for single-scale blocks)."""

    build: Callable[[], nn.Module]
    channels: list[int]
    sizes: list[tuple[int, int]]
    cond_channels: int
    multi_scale: bool = False

    def cond_size(self) -> tuple[int, int]:
        return (min(h for h, _ in self.sizes), min(w for _, w in self.sizes))


CASES = {
    "allinone_even": Case(lambda: AllInOneCoupling(4, 3, hidden_channels=5, permute_seed=1), [4], [(3, 3)], 3),
    "allinone_odd": Case(lambda: AllInOneCoupling(5, 2), [5], [(2, 3)], 2),
    "allinone_nocond": Case(lambda: AllInOneCoupling(3, 0, hidden_channels=4), [3], [(3, 2)], 0),
    "conditional_flow": Case(lambda: ConditionalFlow(3, 2, n_blocks=3, hidden_channels=4), [3], [(3, 3)], 2),
    "fusion": Case(
        lambda: FusionCoupling([3, 4, 2], 2, hidden_channels=6), [3, 4, 2], [(4, 4), (3, 3), (2, 2)], 2, True
    ),
    "fusion_reference_width": Case(lambda: FusionCoupling([2, 3], 3, None), [2, 3], [(4, 2), (2, 2)], 3, True),
}


def make_inputs(case: Case, dtype: torch.dtype, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(B, c, h, w, generator=gen, dtype=dtype) for c, (h, w) in zip(case.channels, case.sizes)]
    cond = None
    if case.cond_channels:
        cond = torch.randn(B, case.cond_channels, *case.cond_size(), generator=gen, dtype=dtype)
    return xs, cond


def run_forward(case: Case, block: nn.Module, xs: list[torch.Tensor], cond) -> tuple[list[torch.Tensor], torch.Tensor]:
    if case.multi_scale:
        return block(xs, cond)
    y, logdet = block(xs[0], cond)
    return [y], logdet


def run_inverse(case: Case, block: nn.Module, ys: list[torch.Tensor], cond) -> list[torch.Tensor]:
    return block.inverse(ys, cond) if case.multi_scale else [block.inverse(ys[0], cond)]


def perturb(block: nn.Module, seed: int = 1, std: float = 0.5) -> nn.Module:
    """Move every parameter randomly so the block is far from its identity initialisation."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return block


def built(case: Case, dtype: torch.dtype = torch.float64, seed: int = 0, perturbed: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    block = case.build().to(dtype)
    return perturb(block, seed + 1) if perturbed else block


case_names = pytest.mark.parametrize("name", list(CASES))


@case_names
def test_inverse_recovers_input_exactly(name: str) -> None:
    case = CASES[name]
    block = built(case)
    xs, cond = make_inputs(case, torch.float64)
    ys, logdet = run_forward(case, block, xs, cond)
    # the perturbed block must be far from the identity, or this test would prove nothing
    assert max((y.sort(dim=1).values - x.sort(dim=1).values).abs().max().item() for x, y in zip(xs, ys)) > 1e-2
    assert logdet.abs().min().item() > 1e-3
    back = run_inverse(case, block, ys, cond)
    for x, x_back in zip(xs, back):
        assert x_back.shape == x.shape
        assert torch.allclose(x_back, x, atol=1e-5, rtol=0)


@case_names
def test_logdet_equals_autograd_jacobian(name: str) -> None:
    case = CASES[name]
    block = built(case)
    xs, cond = make_inputs(case, torch.float64)
    numels = [x[0].numel() for x in xs]

    def flat_map(flat: torch.Tensor) -> torch.Tensor:
        pieces = flat.split(numels, dim=1)
        inputs = [p.reshape(x.shape) for p, x in zip(pieces, xs)]
        ys, _ = run_forward(case, block, inputs, cond)
        return torch.cat([y.flatten(1) for y in ys], dim=1)

    flat = torch.cat([x.flatten(1) for x in xs], dim=1)
    jac = torch.autograd.functional.jacobian(flat_map, flat, vectorize=True)  # (B, D, B, D)
    _, logdet = run_forward(case, block, xs, cond)
    for b in range(B):
        sign, logabsdet = torch.linalg.slogdet(jac[b, :, b, :])
        assert sign != 0
        assert torch.allclose(logdet[b], logabsdet, atol=1e-8, rtol=1e-8)
        for other in range(B):  # samples never mix
            if other != b:
                assert jac[b, :, other, :].abs().max().item() == 0.0


@case_names
def test_gradients_reach_every_parameter_and_the_condition(name: str) -> None:
    case = CASES[name]
    block = built(case)
    xs, cond = make_inputs(case, torch.float64)
    if cond is not None:
        cond.requires_grad_(True)
    ys, logdet = run_forward(case, block, xs, cond)
    loss = sum(0.5 * (y**2).flatten(1).sum(1) for y in ys).mean() - logdet.mean()
    loss.backward()
    for pname, p in block.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().max().item() > 0, pname
    if cond is not None:
        assert cond.grad is not None and cond.grad.abs().max().item() > 0


@case_names
def test_fresh_block_permutes_channels_with_zero_logdet(name: str) -> None:
    case = CASES[name]
    block = built(case, perturbed=False)
    xs, cond = make_inputs(case, torch.float64)
    ys, logdet = run_forward(case, block, xs, cond)
    # the global scale is 1 up to float32 rounding of its initial gamma (the block is built in float32)
    assert torch.allclose(logdet, torch.zeros_like(logdet), atol=1e-5)
    for x, y in zip(xs, ys):  # identity up to a channel permutation (the same at every pixel)
        assert torch.allclose(y.sort(dim=1).values, x.sort(dim=1).values, atol=1e-6)


@case_names
def test_same_seed_same_result(name: str) -> None:
    case = CASES[name]
    xs, cond = make_inputs(case, torch.float32)
    first_y, first_ld = run_forward(case, built(case, torch.float32, seed=3), xs, cond)
    again_y, again_ld = run_forward(case, built(case, torch.float32, seed=3), xs, cond)
    other_y, _ = run_forward(case, built(case, torch.float32, seed=4), xs, cond)
    assert all(torch.equal(a, b) for a, b in zip(first_y, again_y))
    assert torch.equal(first_ld, again_ld)
    assert not all(torch.equal(a, b) for a, b in zip(first_y, other_y))


@case_names
def test_float32_inverse_is_close(name: str) -> None:
    case = CASES[name]
    block = built(case, torch.float32)
    xs, cond = make_inputs(case, torch.float32)
    ys, _ = run_forward(case, block, xs, cond)
    for x, x_back in zip(xs, run_inverse(case, block, ys, cond)):
        assert torch.allclose(x_back, x, atol=1e-4, rtol=0)


@case_names
def test_macs_match_a_conv_hook_count(name: str) -> None:
    case = CASES[name]
    block = built(case, torch.float32, perturbed=False)
    counted = []

    def hook(module: nn.Conv2d, inputs, output) -> None:
        kh, kw = module.kernel_size
        counted.append(output[0].numel() * module.in_channels // module.groups * kh * kw)

    handles = [m.register_forward_hook(hook) for m in block.modules() if isinstance(m, nn.Conv2d)]
    xs, cond = make_inputs(case, torch.float32)
    run_forward(case, block, xs, cond)
    for handle in handles:
        handle.remove()
    expected = block.macs(case.sizes) if case.multi_scale else block.macs(*case.sizes[0])
    assert expected == sum(counted)


def test_permutation_survives_state_dict_round_trip() -> None:
    source = perturb(AllInOneCoupling(7, 2, hidden_channels=3, permute_seed=11).double())
    target = AllInOneCoupling(7, 2, hidden_channels=3, permute_seed=12).double()
    assert not torch.equal(source.perm, target.perm)
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    target.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(target.perm, source.perm)
    assert torch.equal(target.perm[target.inv_perm], torch.arange(7))
    x, cond = torch.randn(B, 7, 2, 2, dtype=torch.float64), torch.randn(B, 2, 2, 2, dtype=torch.float64)
    assert torch.equal(target(x, cond)[0], source(x, cond)[0])


def test_stacked_blocks_use_distinct_permutations() -> None:
    flow = ConditionalFlow(6, 1, n_blocks=4)
    perms = {tuple(block.perm.tolist()) for block in flow.blocks}
    assert len(perms) == 4


def test_all_in_one_block_follows_the_reference_formula() -> None:
    """Rebuild one block's output by hand from its parts (split, 0.1*subnet, tanh clamp, affine, perm)."""
    block = perturb(AllInOneCoupling(5, 2, hidden_channels=3, clamp=1.9, permute_seed=4).double())
    x, cond = torch.randn(B, 5, 3, 2, dtype=torch.float64), torch.randn(B, 2, 3, 2, dtype=torch.float64)
    x1, x2 = x[:, :3], x[:, 3:]
    a = 0.1 * block.subnet(torch.cat([x1, cond], dim=1))
    s = 1.9 * torch.tanh(a[:, :2])
    scale = 0.1 * torch.log1p(torch.exp(0.5 * block.global_gamma)) / 0.5
    expected = (torch.cat([x1, x2 * torch.exp(s) + a[:, 2:]], dim=1) * scale + block.global_offset)[:, block.perm]
    y, logdet = block(x, cond)
    assert torch.allclose(y, expected, atol=1e-12)
    assert torch.allclose(logdet, s.sum(dim=(1, 2, 3)) + 6 * torch.log(scale).sum(), atol=1e-12)


def test_global_scale_starts_at_one() -> None:
    block = AllInOneCoupling(4, 1)
    assert torch.allclose(block.log_global_scale().exp(), torch.ones(1, 4, 1, 1), atol=1e-6)


def test_channel_layer_norm_matches_torch_layer_norm() -> None:
    norm = perturb(ChannelLayerNorm(6).double())
    x = torch.randn(B, 6, 3, 4, dtype=torch.float64)
    reference = nn.LayerNorm(6).double()
    reference.load_state_dict(norm.state_dict())
    expected = torch.stack([reference(x[:, :, i, j]) for i in range(3) for j in range(4)], dim=-1).reshape(B, 6, 3, 4)
    assert torch.allclose(norm(x), expected, atol=1e-12)


def test_subnet_widths_and_parameter_count() -> None:
    wide, narrow = CouplingSubnet(10, 6), CouplingSubnet(10, 6, hidden_ch=2)
    assert wide.hidden_ch == 10 and narrow.hidden_ch == 2
    brute = sum(p.numel() for p in narrow.parameters())
    assert count_parameters(narrow) == brute == (9 * 10 * 2 + 2) + 2 * 2 + (9 * 2 * 6 + 6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: AllInOneCoupling(1, 2),
        lambda: AllInOneCoupling(4, -1),
        lambda: AllInOneCoupling(4, 2, hidden_channels=0),
        lambda: AllInOneCoupling(4, 2, clamp=0.0),
        lambda: ConditionalFlow(4, 2, n_blocks=0),
        lambda: FusionCoupling([], 2),
        lambda: FusionCoupling([4, 1], 2),
        lambda: FusionCoupling([4, 4], 2, hidden_channels=0),
    ],
)
def test_bad_settings_raise_vqflow_error(make: Callable[[], nn.Module]) -> None:
    with pytest.raises(VQFlowError):
        make()


def test_bad_shapes_raise_vqflow_error() -> None:
    block = AllInOneCoupling(4, 2)
    with pytest.raises(VQFlowError, match="condition"):
        block(torch.randn(1, 4, 3, 3), torch.randn(1, 2, 2, 2))
    with pytest.raises(VQFlowError, match="input"):
        block(torch.randn(1, 3, 3, 3), torch.randn(1, 2, 3, 3))
    fusion = FusionCoupling([2, 2], 1)
    with pytest.raises(VQFlowError, match="scales"):
        fusion([torch.randn(1, 2, 4, 4)], torch.randn(1, 1, 4, 4))
    with pytest.raises(VQFlowError, match="condition"):
        fusion([torch.randn(1, 2, 4, 4), torch.randn(1, 2, 2, 2)], torch.randn(1, 1, 4, 4))


@case_names
def test_every_block_is_an_invertible_module(name: str) -> None:
    from vqflow.model.flows import InvertibleModule

    assert isinstance(built(CASES[name], perturbed=False), InvertibleModule)
