"""The VQ-Flow head: shapes for both presets, ablation switches, a tiny training run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from vqflow import config
from vqflow.engine.build import build_head
from vqflow.model.condition import BroadcastCondition, QuantizedCondition
from vqflow.model.scores import log_likelihood_maps, score_batch
from vqflow.model.vqflow import VQFlow, nll_parts, nll_per_dim, vqflow_loss

TINY = dict(
    global_dim=16, pos_dim=8, num_concepts=4, num_patterns=16, flow_blocks=[1, 1, 1], subnet_hidden=16, fusion_hidden=16
)
CH = (4, 6, 8, 12)


def feats(b: int, sizes=(8, 4, 2, 2), channels=CH, gen=None) -> list[torch.Tensor]:
    return [torch.randn(b, c, s, s, generator=gen) for c, s in zip(channels, sizes)]


def tiny(**kw) -> VQFlow:
    torch.manual_seed(0)
    return VQFlow(CH, **{**TINY, **kw})


@pytest.mark.parametrize(
    "switch",
    [
        {},
        {"quantize": False},
        {"concept_patterns": False},
        {"latent": "single"},
        {"latent_logdet": False},
        {"vq_init": "reference"},
        {"fusion": False},
    ],
)
def test_forward_shapes_every_switch(switch):
    m = tiny(**switch)
    out = m(feats(3))
    assert [tuple(u.shape) for u in out.u] == [(3, 4, 8, 8), (3, 6, 4, 4), (3, 8, 2, 2)]
    assert out.logdet.shape == (3,) and out.concept.shape == (3,)
    loss = vqflow_loss(out)
    assert torch.isfinite(loss)
    levels = set(out.codes)
    expected = {"cpc", "cspc1", "cspc2", "cspc3"} | (set() if switch.get("fusion") is False else {"cspc4"})
    assert levels == (set() if switch.get("quantize") is False else expected)
    loss.backward()
    unused = [n for n, p in m.named_parameters() if p.grad is None and not n.startswith(("cpc", "cspc"))]
    assert not unused, f"parameters the loss never reaches: {unused}"


def test_without_fusion_the_latents_are_the_flows_outputs_and_the_log_det_is_exact():
    """fusion=False: u_s is the scale's own flow output (through the concept-aware latent) and the
    log-det is the Jacobian of the whole map, checked by autograd on a tiny input."""
    m = tiny(fusion=False, quantize=False).eval().double()
    x = [f.double() for f in feats(1, sizes=(2, 2, 1, 1), gen=torch.Generator().manual_seed(1))]
    flat = torch.cat([f.flatten() for f in x[:3]])

    def latents(v: torch.Tensor) -> torch.Tensor:
        parts, start = [], 0
        for f in x[:3]:
            parts.append(v[start : start + f.numel()].view_as(f))
            start += f.numel()
        return torch.cat([u.flatten() for u in m([*parts, x[3]]).u])

    jac = torch.autograd.functional.jacobian(latents, flat)
    with torch.no_grad():
        logdet = m(x).logdet
    assert float(logdet) == pytest.approx(float(torch.linalg.slogdet(jac).logabsdet), rel=1e-6, abs=1e-6)


def test_fast_preset_shapes_match_lite0_at_256():
    m = build_head(config.preset("fast"), (24, 40, 112, 320)).eval()
    out = m(feats(2, sizes=(32, 16, 8, 8), channels=(24, 40, 112, 320)))
    assert [tuple(u.shape[1:]) for u in out.u] == [(24, 32, 32), (40, 16, 16), (112, 8, 8)]


def test_the_dead_code_threshold_reaches_every_codebook():
    cfg = config.apply_options(config.preset("fast"), ["model.vq_dead_threshold=0"])
    m = build_head(cfg, (24, 40, 112, 320))
    assert {q.dead_code_threshold for q in m.quantizers().values()} == {0.0}
    assert {
        q.dead_code_threshold for q in build_head(config.preset("fast"), (24, 40, 112, 320)).quantizers().values()
    } == {1e-2}


def test_reference_preset_sizes():
    """ConvNeXtV2-B channels: the condition is 576 + 512 = 1088 wide and the head has ~309M
    trainable parameters (METHOD.md sections 2.8 and 10)."""
    m = build_head(config.preset("reference"), (128, 256, 512, 1024))
    n = sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert 250e6 < n < 370e6, n
    couplings = [b for b in m.flows[0].modules() if hasattr(b, "cond_channels")]
    assert couplings and all(b.cond_channels == 1088 for b in couplings)
    assert m.fusion.cond_channels == 1088
    out = m.eval()(feats(1, sizes=(4, 2, 1, 1), channels=(128, 256, 512, 1024)))
    assert [u.shape[1] for u in out.u] == [128, 256, 512]


def test_latent_logdet_switch_changes_only_the_jacobian():
    m = tiny()
    with torch.no_grad():
        for head in m.latent_scale:
            head.bias.fill_(1.0)  # scale != 1 so the Jacobian term is non-zero
    f = feats(2, gen=torch.Generator().manual_seed(1))
    m.eval()
    a = m(f)
    m.latent_logdet = False
    b = m(f)
    scale = torch.nn.functional.softplus(torch.tensor(1.0)) + 1e-3
    hw = sum(u.shape[1] * u.shape[2] * u.shape[3] for u in a.u)
    assert torch.allclose(b.logdet - a.logdet, torch.full((2,), hw * torch.log(scale).item()), rtol=1e-4)
    assert torch.allclose(a.latent_logdet, a.logdet - b.logdet) and not b.latent_logdet.any()
    energy, flow, latent = nll_parts(a)
    assert torch.allclose(energy + flow + latent + 0.5 * math.log(2 * math.pi), nll_per_dim(a))
    assert torch.allclose(latent * hw, -a.latent_logdet) and bool((latent > 0).all())  # scale > 1 costs likelihood


def test_nll_per_dim_is_the_change_of_variables_density():
    """NLL/dim = -(log N(u; 0, I) + log|det|) / dims, the density from torch.distributions
    (independent of the formula in nll_per_dim), with non-trivial latents and log-dets."""
    m = tiny()
    with torch.no_grad():
        for head in m.latent_scale:
            head.bias.fill_(0.7)
    out = m.eval()(feats(2, gen=torch.Generator().manual_seed(3)))
    normal = torch.distributions.Normal(0.0, 1.0)
    log_p = sum(normal.log_prob(u.double()).flatten(1).sum(1) for u in out.u) + out.logdet.double()
    dims = sum(u[0].numel() for u in out.u)
    assert out.logdet.abs().min() > 1  # the Jacobian term is really exercised
    assert torch.allclose(nll_per_dim(out).double(), -log_p / dims, atol=1e-5)


def _inlier(b: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Two 'classes' of structured features: a class-specific mean pattern plus small noise."""
    out = []
    cls = torch.randint(0, 2, (b,), generator=gen)
    for c, s in zip(CH, (8, 4, 2, 2)):
        base = torch.stack([torch.linspace(-1, 1, c), torch.linspace(1, -1, c)])[cls]
        out.append(base[:, :, None, None] * 2 + 0.3 * torch.randn(b, c, s, s, generator=gen))
    return out


def test_tiny_training_loss_falls_and_outliers_score_higher():
    torch.manual_seed(0)
    m = tiny()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(150):
        loss = vqflow_loss(m(_inlier(16, gen)))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 2.0)
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.5
    m.eval()
    gen = torch.Generator().manual_seed(123)
    inl = _inlier(20, gen)
    outl = _inlier(20, gen)
    outl[0][:, :, 2:5, 2:5] += 3 * torch.randn(20, CH[0], 3, 3, generator=gen)  # a local defect
    outl[1][:, :, 1:3, 1:3] += 3 * torch.randn(20, CH[1], 2, 2, generator=gen)
    with torch.no_grad():
        s_in = score_batch(log_likelihood_maps(m(inl).u, 32), topk=0.03).score
        s_out = score_batch(log_likelihood_maps(m(outl).u, 32), topk=0.03).score
    labels = [0] * 20 + [1] * 20
    assert roc_auc_score(labels, torch.cat([s_in, s_out]).numpy()) > 0.9


@pytest.mark.parametrize("size", [(5, 7), (1, 1), (2, 9)])
def test_quantized_condition_conv_equals_the_dense_conv(size):
    """Lookups (positional conv, per-tap codebook table, in-bounds mask for the global vector) give
    exactly the 3x3 zero-padded convolution of the dense condition, borders included."""
    gen = torch.Generator().manual_seed(3)
    h, w = size
    p, d, k, b, o = 8, 12, 10, 3, 6
    cond = QuantizedCondition(
        torch.randn(1, p, h, w, generator=gen),
        torch.randn(b, d, generator=gen),
        torch.randint(0, k, (b, h, w), generator=gen),
        torch.randn(k, p + d, generator=gen),
    )
    dense = cond.dense()
    assert dense.shape == cond.shape == (b, p + 2 * d, h, w)
    assert torch.equal(dense[:, p + d :], cond.y[:, :, None, None].expand(-1, -1, h, w))
    weight = torch.randn(o, p + 2 * d, 3, 3, generator=gen)
    torch.testing.assert_close(cond.conv3x3(weight), F.conv2d(dense, weight, padding=1), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("size", [(5, 7), (1, 1), (2, 9), (3, 4)])
def test_broadcast_condition_conv_and_its_gradients_equal_the_dense_conv(size):
    """The training form (local features densely, the global vector's share on a <= 3x3 map stretched
    to the borders and interior) gives the zero-padded 3x3 convolution of cat(local, broadcast y),
    and autograd through it gives the dense conv's gradients for the features, y and the weight."""
    gen = torch.Generator().manual_seed(5)
    h, w = size
    c, d, b, o = 7, 5, 3, 4
    local = torch.randn(b, c, h, w, generator=gen, requires_grad=True)
    y = torch.randn(b, d, generator=gen, requires_grad=True)
    weight = torch.randn(o, c + d, 3, 3, generator=gen, requires_grad=True)
    grad_out = torch.randn(b, o, h, w, generator=gen)
    cond = BroadcastCondition(local, y)
    assert cond.shape == (b, c + d, h, w)
    dense_cond = torch.cat([local, y[:, :, None, None].expand(-1, -1, h, w)], 1)
    results = []
    for out in (cond.conv3x3(weight), F.conv2d(dense_cond, weight, padding=1)):
        results.append((out.detach(), *torch.autograd.grad(out, (local, y, weight), grad_out)))
    for fast, ref in zip(*results, strict=True):
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def test_inference_with_quantized_conditions_matches_the_dense_flows():
    """Without autograd VQFlow keeps the conditions quantized; its output must equal the dense path's
    (subnets randomised so that no coupling is the identity), and each block still inverts exactly."""
    gen = torch.Generator().manual_seed(4)
    model = tiny()
    model(feats(4, gen=gen))  # training mode: initialises the codebooks
    for flow in model.flows:
        for block in flow.blocks:
            torch.nn.init.normal_(block.subnet.conv_out.weight, std=0.3, generator=gen)
    model.eval()
    x = feats(3, gen=gen)
    with torch.no_grad():
        fast = model(x)
        model.lookup_condition = False
        dense = model(x)
    assert dense.codes.keys() == fast.codes.keys()
    torch.testing.assert_close(fast.logdet, dense.logdet, rtol=1e-5, atol=1e-4)
    for a, b in zip(fast.u, dense.u):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(dense.logdet, torch.zeros_like(dense.logdet))
    block = model.flows[0].blocks[0]
    p, d = model.pos_dim, TINY["global_dim"]
    cond = QuantizedCondition(
        torch.randn(1, p, 8, 8, generator=gen),
        torch.randn(3, d, generator=gen),
        torch.randint(0, 4, (3, 8, 8), generator=gen),
        torch.randn(4, p + d, generator=gen),
    )
    with torch.no_grad():
        y, _ = block(x[0], cond)
        torch.testing.assert_close(block.inverse(y, cond), x[0], rtol=1e-5, atol=1e-5)


def test_no_vq_log_det_is_the_full_jacobian():
    """Without codebooks the condition must not depend on the flows' own inputs: the reported
    log-det equals log|det| of the whole map (h1, h2, h3) -> (u1, u2, u3), taken by autograd
    through every path, the condition's included (f4 held fixed, as the likelihood's context)."""
    gen = torch.Generator().manual_seed(5)
    model = tiny(quantize=False).double()
    for module in model.modules():  # no block may be the identity, or the condition would not matter
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=0.2, generator=gen)
    model.eval()
    x = [f.double() for f in feats(1, gen=gen)]
    shapes = [f.shape for f in x[:3]]
    sizes = [f.numel() for f in x[:3]]

    def latents(flat: torch.Tensor) -> torch.Tensor:
        hs = [p.reshape(s) for p, s in zip(flat.split(sizes), shapes)]
        return torch.cat([u.flatten() for u in model([*hs, x[3]]).u])

    flat = torch.cat([f.flatten() for f in x[:3]])
    jac = torch.autograd.functional.jacobian(latents, flat)
    with torch.no_grad():
        reported = model(x).logdet[0]
    assert torch.linalg.slogdet(jac).logabsdet.item() == pytest.approx(reported.item(), abs=1e-6)


def test_cap_and_ours_quantize_patterns_of_the_same_width():
    """CAP (concept_patterns=false) quantizes h'_s itself, D + P wide like ours' residual (the
    authors' form), not concat(h'_s, PE)."""
    d, p = TINY["global_dim"], TINY["pos_dim"]
    for switch in (True, False):
        model = tiny(concept_patterns=switch)
        assert {q.codes.shape[1] for q in model.cspc} == {d + p}
        assert model.flows[0].cond_channels == d + p + d
    model = tiny(concept_patterns=False)
    model(feats(2))
    model.eval()
    with torch.no_grad():
        h = torch.randn(2, d + p, 8, 8)
        hq, _, idx = model._patterns(0, h, torch.randn(2, d))
    torch.testing.assert_close(hq, model.cspc[0].codes[idx].permute(0, 3, 1, 2))


@pytest.mark.parametrize("shape", [(8, 8, 32, 32), (5, 7, 16, 9), (16, 16, 8, 8), (1, 1, 4, 4)])
def test_resize_bilinear_matches_interpolate_with_its_gradient(shape):
    """The matrix-product resize (deterministic backward on CUDA) gives F.interpolate's values and
    gradients (bilinear, half-pixel centres), up- and downsampling."""
    from vqflow.model.layers import resize_bilinear

    hi, wi, ho, wo = shape
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, hi, wi, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, ho, wo, generator=gen, dtype=torch.float64)
    ours = resize_bilinear(x, (ho, wo))
    ref = F.interpolate(x, size=(ho, wo), mode="bilinear", align_corners=False)
    torch.testing.assert_close(ours, ref)
    (g_ours,) = torch.autograd.grad((ours * w).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), x)
    torch.testing.assert_close(g_ours, g_ref)


def test_combined_image_score_is_local_and_global_evidence_standardised():
    """Detector(image_score="combined"): evidence = (top-k of the blurred absolute NLL map, the
    image's NLL per dimension), both recomputed here from the latents by other means (scipy's
    blur, torch.distributions for the density); the score is their standardised sum."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    from vqflow.calibration import Calibration, standardisation
    from vqflow.model.detector import Detector

    m = tiny().eval()
    det = Detector(torch.nn.Identity(), m, topk=0.05, blur_sigma=1.5, image_score="combined").eval()
    x = feats(5, gen=torch.Generator().manual_seed(3))
    with torch.no_grad():
        pred = det.predict_features(x, (16, 16))
        out = m(x)
    maps = (
        -sum(
            F.interpolate(-0.5 * u.pow(2).mean(1, keepdim=True), size=(16, 16), mode="bilinear", align_corners=False)
            for u in out.u
        )[:, 0]
        .double()
        .numpy()
    )
    blurred = np.stack([gaussian_filter(a, 1.5, mode="mirror", truncate=4.0) for a in maps])
    k = int(np.ceil(0.05 * 256))
    local = np.sort(blurred.reshape(5, -1), 1)[:, -k:].mean(1)
    normal = torch.distributions.Normal(0.0, 1.0)
    dims = sum(u[0].numel() for u in out.u)
    nll = -(sum(normal.log_prob(u.double()).flatten(1).sum(1) for u in out.u) + out.logdet.double()) / dims
    np.testing.assert_allclose(pred.evidence[:, 0].numpy(), local, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pred.evidence[:, 1].numpy(), nll.numpy(), rtol=1e-5)
    assert torch.allclose(pred.score, pred.evidence.sum(1)), "before calibration: the plain sum"

    center, scale = standardisation(pred.evidence.numpy())
    det.calibration = Calibration(score_center=center, score_scale=scale)
    with torch.no_grad():
        score = det.predict_features(x, (16, 16)).score.double().numpy()
    expected = (
        (pred.evidence.double().numpy() - np.median(pred.evidence.double().numpy(), 0)) / np.asarray(scale)
    ).sum(1)
    np.testing.assert_allclose(score, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(score, det.calibration.combine(pred.evidence.numpy()), rtol=1e-5, atol=1e-6)


def test_local_knn_global_part_is_the_kth_neighbour_distance_and_needs_a_bank():
    """Detector(image_score="local_knn"): the second evidence is the Euclidean distance of the unit-length
    mean f4 to its k-th nearest bank row (scikit-learn's brute force); `knn_skip` moves one further;
    before a bank exists the error says to calibrate."""
    import numpy as np
    from sklearn.neighbors import NearestNeighbors

    from vqflow.errors import VQFlowError
    from vqflow.model.detector import Detector

    m = tiny().eval()
    det = Detector(torch.nn.Identity(), m, topk=0.05, image_score="local_knn", knn_k=3).eval()
    x = feats(4, gen=torch.Generator().manual_seed(5))
    with pytest.raises(VQFlowError, match="calibrate first"):
        det.predict_features(x, (16, 16))
    bank = F.normalize(torch.randn(9, x[3].shape[1], generator=torch.Generator().manual_seed(6)), dim=1)
    det.knn_bank = bank
    with torch.no_grad():
        pred = det.predict_features(x, (16, 16))
        skipped = det.predict_features(x, (16, 16), knn_skip=1)
    g = x[3].mean(dim=(2, 3)).double().numpy()
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    dist = NearestNeighbors(n_neighbors=4).fit(bank.double().numpy()).kneighbors(g)[0]
    np.testing.assert_allclose(pred.evidence[:, 1].numpy(), dist[:, 2], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(skipped.evidence[:, 1].numpy(), dist[:, 3], rtol=1e-4, atol=1e-5)
    ref = Detector(torch.nn.Identity(), m, topk=0.05, image_score="combined").eval()
    with torch.no_grad():
        assert torch.equal(pred.evidence[:, 0], ref.predict_features(x, (16, 16)).evidence[:, 0])


def test_map_image_score_is_the_top_k_of_the_image_map():
    from vqflow.model.detector import Detector

    m = tiny().eval()
    det = Detector(torch.nn.Identity(), m, topk=0.05, blur_sigma=1.0, image_score="map").eval()
    x = feats(3, gen=torch.Generator().manual_seed(4))
    with torch.no_grad():
        pred = det.predict_features(x, (16, 16))
        ref = score_batch(log_likelihood_maps(m(x).u, (16, 16)), "mul", "add", 0.05, 1.0)
    assert torch.equal(pred.score, ref.score) and torch.equal(pred.anomaly_map, ref.pixel_map)


@pytest.mark.parametrize(
    "precision, on_cuda",
    [("auto", torch.float16), ("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", None)],
)
def test_train_precision_sets_the_backbone_autocast_on_cuda_only(precision, on_cuda):
    from vqflow.engine.build import backbone_autocast, build_detector

    assert backbone_autocast(precision, torch.device("cuda")) is on_cuda
    assert backbone_autocast(precision, torch.device("cpu")) is None
    cfg = config.preset("fast")
    cfg.train.precision = precision
    assert build_detector(cfg, torch.nn.Linear(1, 1), tiny()).autocast is None  # a CPU module


def test_a_half_precision_backbone_hands_fp32_features_to_the_flows():
    """Under autocast the backbone computes in half precision (CPU bf16 here: the code path CUDA's
    fp16 takes), and the flows still get fp32 features, close to the fp32 backbone's."""
    from vqflow.backbones import create_backbone
    from vqflow.model.detector import Detector

    torch.manual_seed(0)
    backbone = create_backbone("efficientnet_lite0").eval()
    head = VQFlow(backbone.channels, **TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    full = Detector(backbone, head).features(x)
    half = Detector(backbone, head, autocast=torch.bfloat16).features(x)
    for f, h in zip(full, half, strict=True):
        assert h.dtype == torch.float32 and h.shape == f.shape
        rel = float((h - f).norm() / f.norm())
        assert 0 < rel < 0.05, rel  # rounded to bf16 (not the fp32 path), yet close
    with torch.no_grad():
        assert torch.isfinite(Detector(backbone, head, autocast=torch.bfloat16)(x).score).all()
