"""The VQ-Flow head: CPC, CSPC, parallel conditional flows, concept-aware latent, fusion.

A pure nn.Module over (pooled) backbone features; no training-loop code lives here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vqflow.errors import VQFlowError
from vqflow.model.condition import BroadcastCondition, QuantizedCondition
from vqflow.model.coupling import Condition
from vqflow.model.flows import ConditionalFlow, FusionCoupling
from vqflow.model.layers import FeatureMLP, GlobalMLP, positional_encoding_2d, resize_bilinear
from vqflow.model.quantizer import VectorQuantizer

LEVELS = 3  # flow scales; a fourth pattern level conditions the fusion flow


@dataclass
class VQFlowOutput:
    """What one forward pass gives: latents, log-dets and the quantizers' bookkeeping."""

    u: list[torch.Tensor]  # per scale (B, C_s, H_s, W_s), scored against N(0, I)
    logdet: torch.Tensor  # (B,) log|det| of the whole map features -> u
    commitment: torch.Tensor  # scalar: sum of the quantizers' commitment terms
    concept: torch.Tensor  # (B,) CPC code of each image (zeros without quantization)
    codes: dict[str, torch.Tensor] = field(default_factory=dict)  # level -> code indices
    latent_logdet: torch.Tensor | None = None  # (B,) the concept-aware latent's share of logdet


class VQFlow(nn.Module):
    """Normalizing flows conditioned on hierarchical vector-quantized codebooks (METHOD.md 2)."""

    def __init__(
        self,
        feature_channels: tuple[int, int, int, int],
        *,
        global_dim: int = 512,
        pos_dim: int = 64,
        num_concepts: int = 32,
        num_patterns: int = 512,
        flow_blocks: tuple[int, ...] = (2, 5, 8),
        subnet_hidden: int | None = None,
        fusion_hidden: int | None = None,
        clamp: float = 1.9,
        quantize: bool = True,
        concept_patterns: bool = True,
        latent: str = "concept",
        latent_logdet: bool = True,
        vq_init: str = "kmeans++",
        vq_decay: float = 0.99,
        vq_dead_threshold: float = 1e-2,
        fusion: bool = True,
    ):
        """feature_channels: channels of f1..f4; the rest are METHOD.md's sizes and the
        ablation switches (quantize, concept_patterns, latent, latent_logdet, vq_init,
        vq_dead_threshold: 0 never restarts a dead code; fusion:
        False scores each scale's latent as it leaves its own flow, with no cross-scale flow and
        no fourth pattern level)."""
        super().__init__()
        if len(flow_blocks) != LEVELS:
            raise VQFlowError(f"model.flow_blocks needs {LEVELS} block counts, got {list(flow_blocks)}")
        if pos_dim % 4:
            raise VQFlowError(f"model.pos_dim must be a multiple of 4 (sin/cos for x and y), got {pos_dim}")
        if latent not in ("concept", "single"):
            raise VQFlowError(f"model.latent must be 'concept' or 'single', got {latent!r}")
        self.pos_dim, self.quantize, self.concept_patterns = pos_dim, quantize, concept_patterns
        self.latent, self.latent_logdet, self.vq_init = latent, latent_logdet, vq_init
        self.fuse = fusion
        levels = LEVELS + 1 if fusion else LEVELS  # pattern levels: the fourth conditions the fusion
        self.feature_channels = tuple(int(c) for c in feature_channels)
        c1, c2, c3, c4 = feature_channels
        self.flow_channels = (c1, c2, c3)
        d, p = global_dim, pos_dim
        dp = d + p
        self.global_mlp = GlobalMLP(c4, d)
        self.semantic = nn.Sequential(nn.Conv2d(c4, dp, 1), nn.BatchNorm2d(dp), nn.ReLU(inplace=True))
        # Without codebooks a flow's condition must not depend on the flow's own input h_s (the
        # log-det would miss that path): levels 1-3 then take no FeatureMLP (METHOD.md 2, no-VQ).
        self.feature_mlps = nn.ModuleList(
            [
                FeatureMLP(c, dp) if (quantize and s < LEVELS) or (s == LEVELS and fusion) else nn.Identity()
                for s, c in enumerate(feature_channels)
            ]
        )
        self.upsample_convs = nn.ModuleList([nn.Conv2d(dp, dp, 1) for _ in range(LEVELS)])
        vq = dict(decay=vq_decay, init=vq_init, dead_code_threshold=vq_dead_threshold)
        # CAP quantizes h' directly, ours the residual against the anchor: both D + P wide.
        if quantize:
            self.cpc = VectorQuantizer(num_concepts, d, **vq)
            self.cspc = nn.ModuleList([VectorQuantizer(num_patterns, dp, **vq) for _ in range(levels)])
        cond = dp + d
        self.flows = nn.ModuleList(
            [
                ConditionalFlow(c, cond, n, hidden_channels=subnet_hidden, clamp=clamp)
                for c, n in zip(self.flow_channels, flow_blocks)
            ]
        )
        if latent == "concept":
            self.latent_mean = nn.ModuleList([nn.Linear(d, c) for c in self.flow_channels])
            self.latent_scale = nn.ModuleList([nn.Linear(d, c) for c in self.flow_channels])
            for head in [*self.latent_mean, *self.latent_scale]:
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)
            for head in self.latent_scale:  # softplus(b) + eps = 1 at start
                nn.init.constant_(head.bias, math.log(math.expm1(1.0 - 1e-3)))
        if fusion:
            self.fusion = FusionCoupling(list(self.flow_channels), cond, hidden_channels=fusion_hidden, clamp=clamp)
        self._pe_cache: dict[tuple[int, int, str], torch.Tensor] = {}
        # False: the unquantized (BroadcastCondition) form at inference too (tests, timing).
        self.lookup_condition = True

    def _pe(self, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        key = (h, w, str(like.device))
        if key not in self._pe_cache:
            self._pe_cache[key] = positional_encoding_2d(self.pos_dim, h, w).to(like.device)
        return self._pe_cache[key].to(like.dtype)

    def _patterns(
        self, level: int, h: torch.Tensor, y_hat: torch.Tensor, dense: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Quantized pattern hq_s at one level: a_s + Q_s(h'_s - a_s); CAP: Q_s(h'_s); no VQ:
        a_s + h'_s. With dense=False only the codes (hq is None: a QuantizedCondition stands for it)."""
        b, _, hh, ww = h.shape
        pe = self._pe(hh, ww, h).expand(b, -1, -1, -1)
        anchor = torch.cat([pe, y_hat[:, :, None, None].expand(-1, -1, hh, ww)], 1)
        if not self.quantize:
            return anchor + h, None, None
        target = h - anchor if self.concept_patterns else h
        q = self.cspc[level](target.permute(0, 2, 3, 1))
        if not dense:
            return None, q.commitment, q.indices
        hq = q.quantized.permute(0, 3, 1, 2)
        if self.concept_patterns:
            hq = anchor + hq
        return hq, q.commitment, q.indices

    def _concept(self, f4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """y = MLP(GAP(f4)), its prototype y_hat, the concept index and the CPC commitment."""
        y = self.global_mlp(f4.mean(dim=(2, 3)))
        if not self.quantize:
            return y, y, torch.zeros(y.shape[0], dtype=torch.long, device=y.device), y.new_zeros(())
        q = self.cpc(y)
        return y, q.quantized, q.indices, q.commitment

    def concepts(self, f4: torch.Tensor) -> torch.Tensor:
        """The learned concept (CPC code) of each image from its f4 map alone, (B,): cheap."""
        return self._concept(f4)[2]

    def forward(self, feats: list[torch.Tensor]) -> VQFlowOutput:
        """feats: pooled backbone features (h1, h2, h3, f4), see layers.pool_features."""
        h_in, f4 = feats[:LEVELS], feats[LEVELS]
        y, y_hat, concept, commitment = self._concept(f4)
        codes: dict[str, torch.Tensor] = {"cpc": concept} if self.quantize else {}

        semantic = self.semantic(f4)
        # Without autograd the flows' conditions stay quantized: their convolutions become lookups.
        lookup = self.lookup_condition and self.quantize and self.concept_patterns and not torch.is_grad_enabled()
        conds: list[Condition] = []
        for s in range(LEVELS + 1 if self.fuse else LEVELS):
            if s < LEVELS:
                # Up(semantic) then Conv1x1 == Conv1x1 then Up (both linear, bilinear weights sum to 1):
                # the conv runs at f4's size, 16x fewer pixels at the first level.
                sem = self.upsample_convs[s](semantic)
                hs = resize_bilinear(sem, h_in[s].shape[-2:])
                if self.quantize:  # no VQ: the condition stays free of h_s (see __init__)
                    hs = hs + self.feature_mlps[s](h_in[s])
            else:
                hs = self.feature_mlps[s](f4)
            quantized = lookup and s < LEVELS
            hq, commit, idx = self._patterns(s, hs, y_hat, dense=not quantized)
            if commit is not None:
                commitment = commitment + commit
                codes[f"cspc{s + 1}"] = idx
            if quantized:
                pe = self._pe(*hs.shape[-2:], hs).reshape(1, -1, *hs.shape[-2:])
                conds.append(QuantizedCondition(pe, y_hat, idx, self.cspc[s].codes.to(hs.dtype)))
            elif s < LEVELS:
                conds.append(BroadcastCondition(hq, y_hat))
            else:  # the fusion pools it with the latents: dense
                conds.append(BroadcastCondition(hq, y_hat).dense())

        logdet = y.new_zeros(y.shape[0])
        latent_logdet = y.new_zeros(y.shape[0])
        zs = []
        for s in range(LEVELS):
            z, ld = self.flows[s](h_in[s], conds[s])
            logdet = logdet + ld
            if self.latent == "concept":
                mean = self.latent_mean[s](y_hat)[:, :, None, None]
                scale = F.softplus(self.latent_scale[s](y_hat)) + 1e-3
                z = (z - mean) / scale[:, :, None, None]
                if self.latent_logdet:
                    ld_latent = -z.shape[-1] * z.shape[-2] * torch.log(scale).sum(1)
                    logdet, latent_logdet = logdet + ld_latent, latent_logdet + ld_latent
            zs.append(z)
        if not self.fuse:
            return VQFlowOutput(zs, logdet, commitment, concept, codes, latent_logdet)
        fusion_cond = conds[LEVELS]
        smallest = zs[-1].shape[-2:]
        if fusion_cond.shape[-2:] != smallest:
            fusion_cond = resize_bilinear(fusion_cond, smallest)
        u, ld = self.fusion(zs, fusion_cond)
        return VQFlowOutput(list(u), logdet + ld, commitment, concept, codes, latent_logdet)

    def quantizers(self) -> dict[str, VectorQuantizer]:
        """The named codebooks ('cpc', 'cspc1'..'cspc4'); empty without quantization."""
        if not self.quantize:
            return {}
        return {"cpc": self.cpc, **{f"cspc{i + 1}": q for i, q in enumerate(self.cspc)}}

    # Training hooks: the codebooks' per-epoch bookkeeping, so a training loop needs no
    # knowledge of quantizers (it calls these around each epoch).
    def on_epoch_start(self) -> None:
        """Start counting code usage afresh for the coming epoch."""
        for q in self.quantizers().values():
            q.reset_usage()

    def on_epoch_end(self) -> None:
        """The reference's end-of-epoch dead-code rule (vq_init='reference' only)."""
        if self.vq_init == "reference":
            for q in self.quantizers().values():
                q.reassign_unused()

    def codebook_usage(self) -> dict[str, dict]:
        """Per codebook: codes used this epoch, codebook size, usage perplexity and dead codes
        restarted this epoch."""
        out = {}
        for name, q in self.quantizers().items():
            counts = q.usage_counts.detach().cpu().double()
            p = counts / max(counts.sum().item(), 1.0)
            p = p[p > 0]
            out[name] = {
                "used": int(p.numel()),
                "codes": int(counts.numel()),
                "perplexity": math.exp(-(p * p.log()).sum().item()),
                "restarted": q.restarts,
            }
        return out

    def random_states(self) -> dict[str, torch.Tensor]:
        """The quantizers' generator states (restarts draw from them), for exact resume."""
        return {k: q.generator.get_state() for k, q in self.quantizers().items()}

    def set_random_states(self, states: dict[str, torch.Tensor]) -> None:
        for k, q in self.quantizers().items():
            q.generator.set_state(states[k])


def _latent_dims(out: VQFlowOutput) -> int:
    """Dimensions of one image's latents, over all scales."""
    return sum(u[0].numel() for u in out.u)


def _energy(out: VQFlowOutput) -> torch.Tensor:
    """0.5 |u|^2 per image (B,), over all scales."""
    return sum(0.5 * u.pow(2).flatten(1).sum(1) for u in out.u)


def nll_per_dim(out: VQFlowOutput) -> torch.Tensor:
    """Per-image negative log-likelihood in nats per dimension (B,), Gaussian constant included."""
    return (_energy(out) - out.logdet) / _latent_dims(out) + 0.5 * math.log(2 * math.pi)


def nll_parts(out: VQFlowOutput) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """nll_per_dim's three parts per dimension (B,) each, which sum to it less the Gaussian
    constant: the latents' energy, minus the flows' log-det, minus the concept latent's log-det."""
    dims = _latent_dims(out)
    return _energy(out) / dims, -(out.logdet - out.latent_logdet) / dims, -out.latent_logdet / dims


def vqflow_loss(out: VQFlowOutput, commitment_weight: float = 1.0) -> torch.Tensor:
    """Training loss (METHOD.md 5): mean NLL per dimension plus the commitment terms."""
    return nll_per_dim(out).mean() + commitment_weight * out.commitment
