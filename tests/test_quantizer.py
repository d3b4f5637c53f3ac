"""Tests of the VQ-Flow vector quantizer against brute force, autograd and a numpy EMA replica."""

from __future__ import annotations

import copy
import datetime
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vqflow.errors import VQFlowError
from vqflow.model.quantizer import QuantizerOutput, VectorQuantizer


def gaussian_clusters(seed: int, k: int = 5, d: int = 16, spread: float = 10.0, sigma: float = 0.05):
    """A sampler of batches from k well-separated Gaussian clusters (features, labels)."""
    g = torch.Generator().manual_seed(seed)
    centers = spread * torch.randn(k, d, generator=g)

    def batch(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(k, (n,), generator=g)
        return centers[labels] + sigma * torch.randn(n, d, generator=g), labels

    return batch


def brute_force_nearest(x: np.ndarray, codes: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Nearest allowed code by explicit per-pair squared differences (float64)."""
    d = ((x[:, None, :].astype(np.float64) - codes[None].astype(np.float64)) ** 2).sum(-1)
    d[:, ~allowed] = np.inf
    return d.argmin(1)


@pytest.mark.parametrize("lead", [(7,), (3, 5), (2, 3, 4)])
def test_shapes_and_lookup_match_brute_force(lead):
    torch.manual_seed(0)
    q = VectorQuantizer(6, 4, seed=1)
    q.train()
    q(torch.randn(40, 4))  # initialise
    q.eval()
    x = torch.randn(*lead, 4)
    out = q(x)
    assert isinstance(out, QuantizerOutput)
    assert out.quantized.shape == x.shape
    assert out.indices.shape == lead and out.indices.dtype == torch.long
    assert out.usage.shape == (6,) and out.usage.dtype == torch.long and int(out.usage.sum()) == x[..., 0].numel()
    flat = x.reshape(-1, 4).numpy()
    expected = brute_force_nearest(flat, q.codebook.numpy(), q.active.numpy())
    np.testing.assert_array_equal(out.indices.reshape(-1).numpy(), expected)
    np.testing.assert_allclose(out.quantized.detach().reshape(-1, 4).numpy(), q.codebook.numpy()[expected], atol=1e-6)
    commitment = ((q.codebook.numpy()[expected] - flat) ** 2).mean()
    assert out.commitment.item() == pytest.approx(commitment, rel=1e-5)
    p = np.bincount(expected, minlength=6) / len(expected)
    p = p[p > 0]
    assert out.perplexity.item() == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-5)


def test_straight_through_gradient_is_identity_and_codebook_gets_none():
    torch.manual_seed(0)
    q = VectorQuantizer(5, 3, seed=0)
    q.train()
    x = torch.randn(2, 4, 3, requires_grad=True)
    out = q(x)
    weights = torch.randn_like(x)
    (out.quantized * weights).sum().backward()
    torch.testing.assert_close(x.grad, weights)
    # The commitment term's gradient is the one of mean((sg(q) - x)^2): 2 (x - q) / n.
    x.grad = None
    out = q(x)
    out.commitment.backward()
    looked_up = out.quantized.detach()  # values of the codes used, taken before the EMA step
    torch.testing.assert_close(x.grad, 2 * (x.detach() - looked_up) / x.numel())
    assert list(q.parameters()) == [] and not any(b.requires_grad for b in q.buffers())


def numpy_ema_step(codes, cluster_size, embed_sum, x, decay, eps):
    """Plain numpy replica of one EMA step (assignment by brute force, Laplace smoothing)."""
    k = codes.shape[0]
    idx = brute_force_nearest(x, codes, np.ones(k, bool))
    counts = np.bincount(idx, minlength=k).astype(np.float64)
    sums = np.zeros_like(codes, dtype=np.float64)
    for i, j in enumerate(idx):
        sums[j] += x[i]
    cluster_size = decay * cluster_size + (1 - decay) * counts
    embed_sum = decay * embed_sum + (1 - decay) * sums
    n = cluster_size.sum()
    smoothed = (cluster_size + eps) / (n + k * eps) * n
    return embed_sum / smoothed[:, None], cluster_size, embed_sum


def test_ema_update_matches_numpy_replica():
    g = torch.Generator().manual_seed(3)
    q = VectorQuantizer(4, 3, decay=0.9, eps=1e-3, dead_code_steps=None, seed=0)
    codes = torch.randn(4, 3, generator=g)
    sizes = torch.tensor([2.0, 0.5, 1.0, 0.0])
    sums = codes * sizes.unsqueeze(1) + 0.1 * torch.randn(4, 3, generator=g)
    with torch.no_grad():
        q.codes.copy_(codes)
        q.cluster_size.copy_(sizes)
        q.embed_sum.copy_(sums)
        q.active.fill_(True)
        q.initialized.fill_(True)
    ref = (codes.double().numpy(), sizes.double().numpy(), sums.double().numpy())
    q.train()
    for _ in range(3):
        x = torch.randn(9, 3, generator=g)
        q(x)
        ref = numpy_ema_step(*ref, x.double().numpy(), 0.9, 1e-3)
    np.testing.assert_allclose(q.codebook.numpy(), ref[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(q.cluster_size.numpy(), ref[1], rtol=1e-5)
    np.testing.assert_allclose(q.embed_sum.numpy(), ref[2], rtol=1e-5, atol=1e-6)
    assert q.usage_counts.sum() == 27


@pytest.mark.parametrize("init", ["kmeans++", "reference"])
def test_eval_mode_leaves_every_buffer_unchanged(init):
    torch.manual_seed(0)
    q = VectorQuantizer(8, 4, init=init, seed=0)
    q.train()
    q(torch.randn(30, 4))
    q.eval()
    before = copy.deepcopy(q.state_dict())
    q(torch.randn(50, 4))
    for name, value in q.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_kmeanspp_init_state_is_consistent_and_first_step_keeps_codes():
    batch = gaussian_clusters(0, k=3, d=4, spread=1.0, sigma=0.5)  # overlapping: all codes seeded
    q = VectorQuantizer(6, 4, seed=0, dead_code_steps=None)
    assert not bool(q.initialized)
    x, _ = batch(200)
    q.train()
    out = q(x)
    assert bool(q.initialized) and bool(q.active.all())
    # Lloyd's fixed point: every code is the mean of the rows nearest to it.
    idx = brute_force_nearest(x.numpy(), q.codebook.numpy(), np.ones(6, bool))
    assert int((np.bincount(idx, minlength=6) > 0).sum()) == 6
    np.testing.assert_array_equal(out.indices.numpy(), idx)
    for k in range(6):
        np.testing.assert_allclose(q.codebook[k].numpy(), x.numpy()[idx == k].mean(0), atol=1e-4)
    # Far from the 1/(1-decay) blow-up of zero cluster sizes: codes stay within the data.
    assert float(q.codebook.abs().max()) <= float(x.abs().max())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_five_clusters_each_get_their_own_code_with_kmeanspp(seed):
    torch.manual_seed(seed)
    batch = gaussian_clusters(seed)
    q = VectorQuantizer(32, 16)  # CPC-like: 32 prototypes, one vector per image
    q.train()
    for _ in range(30):
        q(batch()[0])
    q.eval()
    x, labels = batch(200)
    idx = q(x).indices
    codes_per_cluster = [set(idx[labels == c].tolist()) for c in range(5)]
    assert all(len(s) == 1 for s in codes_per_cluster), codes_per_cluster  # one code per cluster
    assert len(set.union(*codes_per_cluster)) == 5  # and different clusters, different codes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_five_clusters_with_the_reference_init(seed):
    """Records what the authors' rule does on the same data.

    Their zero cluster sizes make the first EMA step divide randn codes by ~eps (unused
    codes) or ~(1 - decay) * count (used ones), so the codebook blows up and whichever code
    is nearest after that keeps the data. Across seeds it used 2..5 codes on these clusters
    (clusters merged, never split); only the robust parts are asserted.
    """
    torch.manual_seed(seed)
    batch = gaussian_clusters(seed)
    q = VectorQuantizer(32, 16, init="reference")
    q.train()
    x, _ = batch()
    q(x)
    data_norm = float(x.norm(dim=1).max())
    assert float(q.codebook.norm(dim=1).median()) > 1000 * data_norm  # the blow-up
    for _ in range(29):
        q(batch()[0])
    q.eval()
    x, labels = batch(200)
    idx = q(x).indices
    assert len(set(idx.tolist())) <= 5
    assert all(len(set(idx[labels == c].tolist())) == 1 for c in range(5))


def test_dead_codes_restart_and_stay_revived():
    g = torch.Generator().manual_seed(0)
    q = VectorQuantizer(4, 2, decay=0.5, dead_code_steps=2, seed=0)
    q.train()
    q(torch.randn(64, 2, generator=g))  # all four codes seeded around the origin
    assert bool(q.active.all())
    shifted = torch.tensor([20.0, 20.0])
    checked: set[int] = set()
    just_restarted: list[int] = []
    q.reset_usage()
    counted = 0
    for _ in range(30):  # data moves away: one code follows it, the others die and restart
        before = q.codebook.clone()
        out = q(shifted + torch.randn(64, 2, generator=g))
        counted += len(just_restarted)
        for k in just_restarted:  # the EMA step after a restart must keep the restart
            assert float((q.codebook[k] - shifted).norm()) < 6, k
            assert float((q.codebook[k] - before[k]).norm()) < 3, k
            checked.add(k)
        far_jump = (q.codebook - before).norm(dim=1) > 10
        jumped = far_jump & ((q.codebook - shifted).norm(dim=1) < 6) & (out.usage == 0)  # not EMA moves
        just_restarted = jumped.nonzero().flatten().tolist()
    assert len(checked) == 3, checked  # the three codes left behind were all revived
    assert q.restarts == counted + len(just_restarted) >= 3, "every restart seen is counted"
    q.reset_usage()
    assert q.restarts == 0
    assert bool((out.usage > 0).all())  # and they stay in use
    assert bool((q.cluster_size >= q.dead_code_threshold).all())


def test_a_zero_dead_code_threshold_never_restarts():
    """model.vq_dead_threshold=0 (an ablation): the drift that revives three codes above restarts none."""
    g = torch.Generator().manual_seed(0)
    q = VectorQuantizer(4, 2, decay=0.5, dead_code_steps=2, dead_code_threshold=0.0, seed=0)
    q.train()
    q(torch.randn(64, 2, generator=g))
    q.reset_usage()
    for _ in range(30):
        out = q(torch.tensor([20.0, 20.0]) + torch.randn(64, 2, generator=g))
    assert q.restarts == 0
    assert int((out.usage > 0).sum()) == 1  # one code followed the data, the others stay dead


def test_reference_reassign_is_overwritten_by_the_next_step():
    torch.manual_seed(0)
    q = VectorQuantizer(8, 2, init="reference", seed=0)
    q.train()
    batch = gaussian_clusters(0, k=2, d=2, spread=3.0, sigma=0.3)
    for _ in range(5):
        q(batch()[0])
    twin = copy.deepcopy(q)
    changed = q.reassign_unused()
    assert changed.numel() > 0
    assert not torch.equal(q.codebook, twin.codebook)
    x, _ = batch()
    q(x)
    twin(x)
    # Codes the step did not use come out as the twin's (no reassign): the EMA overwrote it.
    unused = (q.usage_counts == twin.usage_counts) & (q.usage_counts == 0)
    torch.testing.assert_close(q.codebook[unused], twin.codebook[unused])
    assert bool(unused[changed].any())


def test_seed_gives_same_result_and_state_dict_round_trips():
    batch = gaussian_clusters(4, k=3, d=5, spread=1.0, sigma=0.5)
    xs = [batch()[0] for _ in range(5)]

    def run(**kw) -> VectorQuantizer:
        q = VectorQuantizer(7, 5, dead_code_steps=1, **kw)
        q.train()
        for x in xs:
            q(x)
        return q

    a, b = run(seed=11), run(seed=11)
    for name, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[name]), name
    torch.manual_seed(5)
    c = run()
    torch.manual_seed(5)
    d = run()
    assert torch.equal(c.codebook, d.codebook)

    restored = VectorQuantizer(7, 5)
    restored.load_state_dict(a.state_dict())
    assert bool(restored.initialized)
    a.eval()
    restored.eval()
    x = torch.randn(3, 4, 5)
    assert torch.equal(a(x).indices, restored(x).indices)
    assert torch.equal(a(x).quantized, restored(x).quantized)
    a.reset_usage()
    assert int(a.usage_counts.sum()) == 0


def test_bad_arguments_raise_vqflow_error():
    with pytest.raises(VQFlowError, match="init"):
        VectorQuantizer(4, 2, init="random")
    with pytest.raises(VQFlowError, match="decay"):
        VectorQuantizer(4, 2, decay=1.0)
    with pytest.raises(VQFlowError, match="dim=2"):
        VectorQuantizer(4, 2)(torch.zeros(3, 5))


def _distributed_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One process of the gloo test: train on its half of every batch, save its state."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        q = VectorQuantizer(6, 3, decay=0.8, dead_code_steps=None, seed=rank)
        q.train()
        for x in _distributed_batches():
            half = x.shape[0] // world
            q(x[rank * half : (rank + 1) * half])
        torch.save(q.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _distributed_batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.randn(20, 3, generator=g) + 0.3 * i for i in range(4)]


def test_two_process_gloo_reduction_matches_single_process(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    ctx = mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=False)
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=120)
    while not ctx.join(timeout=5):
        if datetime.datetime.now() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("distributed quantizer test timed out")
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name
    single = VectorQuantizer(6, 3, decay=0.8, dead_code_steps=None, seed=0)
    single.train()
    for x in _distributed_batches():
        single(x)
    for name, value in single.state_dict().items():
        torch.testing.assert_close(states[0][name], value, rtol=1e-5, atol=1e-5, msg=name)


def test_nearest_index_matches_brute_force_with_disallowed_codes():
    from vqflow.model.quantizer import nearest_index

    g = torch.Generator().manual_seed(5)
    x, codes = torch.randn(300, 6, generator=g), torch.randn(9, 6, generator=g)
    allowed = torch.tensor([True, False, True, True, False, True, True, True, False])
    expected = brute_force_nearest(x.numpy(), codes.numpy(), allowed.numpy())
    np.testing.assert_array_equal(nearest_index(x, codes, allowed).numpy(), expected)
    assert nearest_index(x, codes, torch.zeros(9, dtype=torch.bool)).eq(0).all()
