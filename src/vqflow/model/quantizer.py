"""The vector quantizer of VQ-Flow (METHOD.md 3): nearest code by squared L2, EMA codebooks.

`init="kmeans++"` (ours) seeds the codebook from data and restarts dead codes inside the EMA
state; `init="reference"` replays the authors' rule so that both can be compared.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from vqflow.errors import VQFlowError

INITS = ("kmeans++", "reference")
CHUNK_ELEMENTS = 1 << 22  # entries of the (rows x codes) distance matrix computed at once


@dataclass
class QuantizerOutput:
    """What one quantizer call gives (shapes for an input of shape (..., D) and K codes)."""

    quantized: torch.Tensor  # (..., D) straight-through: x + sg(q - x)
    indices: torch.Tensor  # (...,) long, the chosen code of every vector
    commitment: torch.Tensor  # scalar mean((sg(q) - x)^2)
    perplexity: torch.Tensor  # scalar exp(entropy of this batch's code usage)
    usage: torch.Tensor  # (K,) long, how often each code was chosen in this batch


def squared_distances(x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """(N, K) squared L2 distances via |x|^2 - 2 x.c + |c|^2 (one matmul), clamped at 0."""
    cross = x @ codes.t()
    return (x.pow(2).sum(1, keepdim=True) - 2 * cross + codes.pow(2).sum(1)).clamp_min_(0)


def nearest_codes(
    x: torch.Tensor, codes: torch.Tensor, allowed: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of and squared distance to the nearest allowed code for every row of x (N, D).

    Computed in row chunks so that the distance matrix stays small; ties go to the lowest
    index. Where no code is allowed, every row gets code 0.
    """
    chunk = max(1, CHUNK_ELEMENTS // max(1, codes.shape[0]))
    indices, dists = [], []
    for part in x.split(chunk):
        d = squared_distances(part, codes)
        if allowed is not None:
            d = d.masked_fill(~allowed, float("inf"))
        best, idx = d.min(1)
        indices.append(idx)
        dists.append(best)
    if not indices:
        return x.new_zeros(0, dtype=torch.long), x.new_zeros(0)
    return torch.cat(indices), torch.cat(dists)


def _tracing() -> bool:
    """True while torch.jit / torch.onnx trace the module (export)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def nearest_index(x: torch.Tensor, codes: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the nearest allowed code for every row of x (N, D): argmin of |c|^2 - 2 x.c
    (|x|^2 does not change the argmin), one fused matmul per row chunk; disallowed codes get
    +inf. Ties go to the lowest index; where no code is allowed, every row gets code 0."""
    norms = codes.pow(2).sum(1)
    if allowed is not None:
        norms = norms.masked_fill(~allowed, float("inf"))
    if _tracing():  # one graph for any batch size
        return torch.addmm(norms[None], x, codes.t(), alpha=-2).argmin(1)
    chunk = max(1, CHUNK_ELEMENTS // max(1, codes.shape[0]))
    parts = [torch.addmm(norms[None], part, codes.t(), alpha=-2).argmin(1) for part in x.split(chunk)]
    return torch.cat(parts) if parts else x.new_zeros(0, dtype=torch.long)


def _sample_index(weights: torch.Tensor, generator: torch.Generator) -> int:
    """One index drawn with probability proportional to `weights` (on CPU, for determinism)."""
    return int(torch.multinomial(weights.detach().to("cpu", torch.float64), 1, generator=generator))


def dsquared_seeds(
    x: torch.Tensor, centers: torch.Tensor, count: int, tol: float, generator: torch.Generator
) -> torch.Tensor:
    """Up to `count` new rows of x chosen by k-means++ D^2 sampling against `centers`.

    Stops early once the rows are explained: the potential sum_i min_c |x_i - c|^2 falls to
    `tol` times the scatter sum_i |x_i - mean|^2 (or to 0, when x has no more distinct rows).
    """
    if count <= 0 or x.shape[0] == 0:
        return x.new_zeros(0, x.shape[1])
    scatter = (x - x.mean(0)).pow(2).sum()
    chosen: list[int] = []
    if centers.shape[0] == 0:
        first = int(torch.randint(x.shape[0], (1,), generator=generator))
        chosen.append(first)
        d2 = (x - x[first]).pow(2).sum(1)
    else:
        d2 = nearest_codes(x, centers)[1]
    while len(chosen) < count:
        potential = d2.sum()
        if potential <= 0 or potential <= tol * scatter:
            break
        i = _sample_index(d2, generator)
        chosen.append(i)
        d2 = torch.minimum(d2, (x - x[i]).pow(2).sum(1))
    return x[chosen]


def lloyd(x: torch.Tensor, centers: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`iters` Lloyd (k-means) steps from `centers`; empty clusters keep their center.

    Returns the centers and how many rows of x each one holds.
    """
    k = centers.shape[0]
    for _ in range(iters):
        idx = nearest_codes(x, centers)[0]
        counts = torch.bincount(idx, minlength=k)
        sums = torch.zeros_like(centers).index_add_(0, idx, x)
        filled = (counts > 0).unsqueeze(1)
        centers = torch.where(filled, sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype), centers)
    counts = torch.bincount(nearest_codes(x, centers)[0], minlength=k)
    return centers, counts


def _distributed() -> bool:
    """True inside an initialised torch.distributed group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows of every process, concatenated in rank order (x itself when not distributed)."""
    if not _distributed():
        return x
    world = dist.get_world_size()
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(int(s) for s in sizes))
    padded = x.new_zeros(longest, x.shape[1])
    padded[: x.shape[0]] = x
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)])


class VectorQuantizer(nn.Module):
    """Nearest-code quantizer for inputs (..., dim) with an EMA-updated codebook of buffers.

    Training mode updates the codebook by EMA of per-code counts and sums (decay, Laplace
    smoothing of cluster sizes with eps), all-reduced across processes; eval mode only looks
    codes up. Gradients never reach the codebook; the output is straight-through.

    init="kmeans++" (ours): the first training batch (gathered over processes) seeds the
    codebook by k-means++ and `init_iters` Lloyd steps, with cluster sizes = the batch's
    counts and embed_sum = code * smoothed size, so the first EMA step keeps the codes.
    Seeding stops once the batch is explained to `distortion_tol` (squared error over the
    batch's scatter), so tight clusters are not split; codes left unseeded stay inactive
    (jittered copies, never chosen) and are seeded from later batches that are not yet
    explained. Codes whose EMA cluster size stays below `dead_code_threshold` for
    `dead_code_steps` steps are restarted on rows of the batch by D^2 sampling, with a cluster
    size `restart_size` and the matching embed_sum, so the next EMA step keeps them.

    init="reference" (the authors' code): codes ~ randn, cluster sizes 0, embed_sum = a
    copy of the codes (so the first EMA step blows codes up by about 1/(1 - decay)), no
    restarts inside training; its end-of-epoch rule is `reassign_unused`, which copies
    well-used codes over unused ones in the codebook only, so the next EMA step overwrites it.
    """

    codes: torch.Tensor
    cluster_size: torch.Tensor
    embed_sum: torch.Tensor
    active: torch.Tensor
    initialized: torch.Tensor
    dead_steps: torch.Tensor
    usage_counts: torch.Tensor

    def __init__(
        self,
        num_codes: int,
        dim: int,
        decay: float = 0.99,
        eps: float = 1e-5,
        init: str = "kmeans++",
        dead_code_steps: int | None = 20,
        dead_code_threshold: float = 1e-2,
        distortion_tol: float = 1e-3,
        init_iters: int = 10,
        init_max_points: int = 65536,
        restart_size: float = 1.0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        _check_args(num_codes, dim, decay, eps, init, dead_code_steps, init_iters, init_max_points)
        self.num_codes, self.dim, self.decay, self.eps, self.init = num_codes, dim, decay, eps, init
        self.dead_code_steps = dead_code_steps if init == "kmeans++" else None
        self.dead_code_threshold = dead_code_threshold
        self.distortion_tol = distortion_tol
        self.init_iters, self.init_max_points = init_iters, init_max_points
        self.restart_size = max(restart_size, 2 * dead_code_threshold)
        if seed is None:  # follow the global seed
            seed = int(torch.randint(0, 2**62, (1,)))
        self.generator = torch.Generator().manual_seed(seed)
        reference = init == "reference"
        codes = torch.randn(num_codes, dim, generator=self.generator) if reference else torch.zeros(num_codes, dim)
        self.register_buffer("codes", codes)
        self.register_buffer("cluster_size", torch.zeros(num_codes))
        self.register_buffer("embed_sum", codes.clone() if reference else torch.zeros(num_codes, dim))
        self.register_buffer("active", torch.full((num_codes,), reference))
        self.register_buffer("initialized", torch.tensor(reference))
        self.register_buffer("dead_steps", torch.zeros(num_codes, dtype=torch.long))
        self.register_buffer("usage_counts", torch.zeros(num_codes, dtype=torch.long))
        self.restarts = 0  # dead codes restarted since reset_usage (inactive ones seeded are not counted)

    @property
    def codebook(self) -> torch.Tensor:
        """The (K, D) codes."""
        return self.codes

    def reset_usage(self) -> None:
        """Zero the running per-code usage (`usage_counts`, summed over training batches) and the
        count of restarts."""
        self.usage_counts.zero_()
        self.restarts = 0

    def extra_repr(self) -> str:
        return f"num_codes={self.num_codes}, dim={self.dim}, decay={self.decay}, init={self.init!r}"

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        """Quantize every vector of x (..., dim); in training mode also update the codebook."""
        if x.shape[-1] != self.dim:
            raise VQFlowError(f"quantizer input has {x.shape[-1]} channels, expected dim={self.dim}")
        lead = x.shape[:-1]
        if _tracing():
            return self._traced_lookup(x)
        with torch.no_grad():
            data = x.detach().reshape(-1, self.dim).float()
            if self.training and not bool(self.initialized):
                self._initialize(data)
            idx = nearest_index(data, self.codes, self.active)
            q = self.codes.index_select(0, idx)  # looked up before the EMA step changes codes
            counts = torch.bincount(idx, minlength=self.num_codes)
            if self.training:
                self._ema_step(data, idx, counts)
        q = q.reshape(x.shape).to(x.dtype)
        diff = q - x
        commitment = diff.pow(2).mean()
        quantized = x + diff.detach() if torch.is_grad_enabled() else q  # straight-through only for autograd
        p = counts.float() / max(1, idx.numel())
        entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()
        return QuantizerOutput(quantized, idx.reshape(lead), commitment, entropy.exp(), counts)

    def _traced_lookup(self, x: torch.Tensor) -> QuantizerOutput:
        """Eval-mode lookup in ops every exporter knows (one distance matrix, no bincount):
        what an exported graph runs. Usage and perplexity are not computed there."""
        data = x.reshape(-1, self.dim).float()
        idx = nearest_index(data, self.codes, self.active)
        q = self.codes.index_select(0, idx).reshape(x.shape).to(x.dtype)
        zero = x.new_zeros(())
        usage = torch.zeros(self.num_codes, dtype=torch.long, device=x.device)
        return QuantizerOutput(q, idx.reshape(x.shape[:-1]), zero, zero, usage)

    def _smoothed_sizes(self) -> torch.Tensor:
        """Laplace-smoothed cluster sizes (c + eps) / (n + K eps) * n, n = sum of sizes."""
        n = self.cluster_size.sum()
        return (self.cluster_size + self.eps) / (n + self.num_codes * self.eps) * n

    def _ema_step(self, data: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor) -> None:
        """EMA of counts and sums (all-reduced over processes), then codes = sums / sizes."""
        sums = torch.zeros_like(self.codes).index_add_(0, idx, data)
        counts = counts.to(self.cluster_size.dtype)
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.usage_counts += counts.round().long()
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        updated = self.embed_sum / self._smoothed_sizes().unsqueeze(1)
        self.codes.copy_(torch.where(self.active.unsqueeze(1), updated, self.codes))
        if self.init == "kmeans++":
            self._refill(data)

    def _initialize(self, data: torch.Tensor) -> None:
        """k-means++ seeding + Lloyd on the (gathered) first batch; EMA state set to match."""
        rows = _gather_rows(data)
        total = rows.shape[0]
        if total > self.init_max_points:
            rows = rows[torch.randperm(total, generator=self.generator)[: self.init_max_points].to(rows.device)]
        seeds = dsquared_seeds(rows, rows[:0], self.num_codes, self.distortion_tol, self.generator)
        centers, counts = lloyd(rows, seeds, self.init_iters)
        m = centers.shape[0]
        self.codes[:m] = centers
        if m < self.num_codes:  # fewer distinct (or needed) vectors than codes: inactive copies
            donors = torch.randint(m, (self.num_codes - m,), generator=self.generator)
            noise = torch.randn(self.num_codes - m, self.dim, generator=self.generator)
            scale = 1e-3 * float(rows.std()) if rows.numel() > 1 else 1e-3
            self.codes[m:] = centers[donors.to(centers.device)] + scale * noise.to(centers.device)
        self.active.zero_()
        self.active[:m] = True
        self.cluster_size.zero_()
        self.cluster_size[:m] = counts.to(self.cluster_size.dtype) * (total / rows.shape[0])
        self.embed_sum.copy_(self.codes * self._smoothed_sizes().unsqueeze(1) * self.active.unsqueeze(1))
        self.dead_steps.zero_()
        self.initialized.fill_(True)
        self._broadcast_state()

    def _refill(self, data: torch.Tensor) -> None:
        """Seed inactive codes and restart dead ones on rows of this batch (D^2 sampling)."""
        dead = torch.zeros_like(self.active)
        if self.dead_code_steps is not None:
            below = self.active & (self.cluster_size < self.dead_code_threshold)
            self.dead_steps.copy_(torch.where(below, self.dead_steps + 1, torch.zeros_like(self.dead_steps)))
            dead = below & (self.dead_steps >= self.dead_code_steps)
        candidates = torch.nonzero(~self.active | dead).flatten()
        if candidates.numel() == 0:
            return
        live = self.codes[self.active & ~dead]
        new = dsquared_seeds(data, live, candidates.numel(), self.distortion_tol, self.generator)
        slots = candidates[: new.shape[0]]
        if slots.numel() > 0:
            self.restarts += int(dead[slots].sum())
            self.codes[slots] = new
            self.active[slots] = True
            self.dead_steps[slots] = 0
            self.cluster_size[slots] = self.restart_size
            self.embed_sum[slots] = new * self._smoothed_sizes()[slots].unsqueeze(1)
        self._broadcast_state()  # every process keeps rank 0's choice

    def _broadcast_state(self) -> None:
        """Make every process hold rank 0's codebook state (no-op when not distributed)."""
        if not _distributed():
            return
        for buf in (self.codes, self.cluster_size, self.embed_sum, self.active, self.dead_steps):
            dist.broadcast(buf, 0)

    @torch.no_grad()
    def reassign_unused(self, threshold: float = 1e-6) -> torch.Tensor:
        """The reference's end-of-epoch rule: copy well-used codes over unused ones.

        Codes whose share of `usage_counts` is below `threshold` (at most K // 2 of them, at
        random) get a copy of a random code among the most used; only the codebook changes,
        not the EMA state, so the next training step overwrites it. Returns the indices set.
        """
        usage = self.usage_counts.double()
        if usage.sum() <= 0:
            return torch.zeros(0, dtype=torch.long)
        share = (usage / usage.sum()).cpu()
        unused = torch.nonzero(share < threshold).flatten()
        k = self.num_codes
        if unused.numel() > k // 2:
            unused = unused[torch.randperm(unused.numel(), generator=self.generator)[: k // 2]]
        most_used = torch.argsort(share, descending=True)[: k - unused.numel()]
        donors = most_used[torch.randperm(most_used.numel(), generator=self.generator)[: unused.numel()]]
        unused = unused[: donors.numel()]
        device = self.codes.device
        self.codes[unused.to(device)] = self.codes[donors.to(device)]
        if _distributed():
            dist.broadcast(self.codes, 0)
        return unused


def _check_args(
    num_codes: int,
    dim: int,
    decay: float,
    eps: float,
    init: str,
    dead_code_steps: int | None,
    init_iters: int,
    init_max_points: int,
) -> None:
    """Raise VQFlowError naming the quantizer argument that is out of range."""
    if num_codes < 1 or dim < 1:
        raise VQFlowError(f"quantizer needs num_codes >= 1 and dim >= 1, got {num_codes} and {dim}")
    if not 0.0 < decay < 1.0:
        raise VQFlowError(f"quantizer decay must lie in (0, 1), got {decay}")
    if eps <= 0:
        raise VQFlowError(f"quantizer eps must be > 0, got {eps}")
    if init not in INITS:
        raise VQFlowError(f"quantizer init '{init}' is unknown; use one of {', '.join(INITS)}")
    if dead_code_steps is not None and dead_code_steps < 1:
        raise VQFlowError(f"quantizer dead_code_steps must be >= 1 or None, got {dead_code_steps}")
    if init_iters < 0 or init_max_points < 1:
        raise VQFlowError("quantizer init_iters must be >= 0 and init_max_points >= 1")
