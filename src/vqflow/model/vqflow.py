"""The VQ-Flow head: CPC, CSPC, parallel conditional flows, concept-aware latent, fusion.

A pure nn.Module over (pooled) backbone features; no training-loop code lives here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vqflow.config import ModelConfig
from vqflow.errors import VQFlowError
from vqflow.model.flows import ConditionalFlow, FusionCoupling
from vqflow.model.layers import FeatureMLP, GlobalMLP, positional_encoding_2d
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
    perplexity: dict[str, float] = field(default_factory=dict)


class VQFlow(nn.Module):
    """Normalizing flows conditioned on hierarchical vector-quantized codebooks (METHOD.md 2)."""

    def __init__(self, cfg: ModelConfig, feature_channels: tuple[int, int, int, int]):
        super().__init__()
        if len(cfg.flow_blocks) != LEVELS:
            raise VQFlowError(f"model.flow_blocks needs {LEVELS} block counts, got {cfg.flow_blocks}")
        if cfg.pos_dim % 4:
            raise VQFlowError(f"model.pos_dim must be a multiple of 4 (sin/cos for x and y), got {cfg.pos_dim}")
        self.cfg = cfg
        c1, c2, c3, c4 = feature_channels
        self.flow_channels = (c1, c2, c3)
        d, p = cfg.global_dim, cfg.pos_dim
        dp = d + p
        self.global_mlp = GlobalMLP(c4, d)
        self.semantic = nn.Sequential(nn.Conv2d(c4, dp, 1), nn.BatchNorm2d(dp), nn.ReLU(inplace=True))
        self.feature_mlps = nn.ModuleList([FeatureMLP(c, dp) for c in feature_channels])
        self.upsample_convs = nn.ModuleList([nn.Conv2d(dp, dp, 1) for _ in range(LEVELS)])
        vq = dict(decay=cfg.vq_decay, init=cfg.vq_init)
        # CAP quantizes concat(h', PE) directly; ours quantizes the residual against the anchor.
        pattern_dim = dp if cfg.concept_patterns else dp + p
        if cfg.quantize:
            self.cpc = VectorQuantizer(cfg.num_concepts, d, **vq)
            self.cspc = nn.ModuleList(
                [VectorQuantizer(cfg.num_patterns, pattern_dim, **vq) for _ in range(LEVELS + 1)]
            )
        cond = pattern_dim + d
        self.flows = nn.ModuleList(
            [
                ConditionalFlow(c, cond, n, hidden_channels=cfg.subnet_hidden, clamp=cfg.clamp)
                for c, n in zip(self.flow_channels, cfg.flow_blocks)
            ]
        )
        if cfg.latent == "concept":
            self.latent_mean = nn.ModuleList([nn.Linear(d, c) for c in self.flow_channels])
            self.latent_scale = nn.ModuleList([nn.Linear(d, c) for c in self.flow_channels])
            for head in [*self.latent_mean, *self.latent_scale]:
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)
            for head in self.latent_scale:  # softplus(b) + eps = 1 at start
                nn.init.constant_(head.bias, math.log(math.expm1(1.0 - 1e-3)))
        self.fusion = FusionCoupling(
            list(self.flow_channels), cond, hidden_channels=cfg.fusion_hidden, clamp=cfg.clamp
        )
        self._pe_cache: dict[tuple[int, int, str], torch.Tensor] = {}

    def _pe(self, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        key = (h, w, str(like.device))
        if key not in self._pe_cache:
            self._pe_cache[key] = positional_encoding_2d(self.cfg.pos_dim, h, w).to(like.device)
        return self._pe_cache[key].to(like.dtype)

    def _patterns(
        self, level: int, h: torch.Tensor, y_hat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, float | None]:
        """Quantized pattern hq_s at one level: a_s + Q_s(h'_s - a_s) (or the CAP/no-VQ forms)."""
        b, _, hh, ww = h.shape
        pe = self._pe(hh, ww, h).expand(b, -1, -1, -1)
        if not self.cfg.quantize:
            return h, None, None, None
        if self.cfg.concept_patterns:
            anchor = torch.cat([pe, y_hat[:, :, None, None].expand(-1, -1, hh, ww)], 1)
            target = h - anchor
        else:
            target = torch.cat([h, pe], 1)
        q = self.cspc[level](target.permute(0, 2, 3, 1))
        hq = q.quantized.permute(0, 3, 1, 2)
        if self.cfg.concept_patterns:
            hq = anchor + hq
        return hq, q.commitment, q.indices, float(q.perplexity)

    def forward(self, feats: list[torch.Tensor]) -> VQFlowOutput:
        """feats: pooled backbone features (h1, h2, h3, f4), see layers.pool_features."""
        h_in, f4 = feats[:LEVELS], feats[LEVELS]
        y = self.global_mlp(f4.mean(dim=(2, 3)))
        commitment = y.new_zeros(())
        codes: dict[str, torch.Tensor] = {}
        perplexity: dict[str, float] = {}
        if self.cfg.quantize:
            q = self.cpc(y)
            y_hat, concept = q.quantized, q.indices
            commitment = commitment + q.commitment
            codes["cpc"], perplexity["cpc"] = concept, float(q.perplexity)
        else:
            y_hat, concept = y, torch.zeros(y.shape[0], dtype=torch.long, device=y.device)

        semantic = self.semantic(f4)
        conds = []
        for s in range(LEVELS + 1):
            if s < LEVELS:
                hs = self.feature_mlps[s](h_in[s])
                up = F.interpolate(semantic, size=hs.shape[-2:], mode="bilinear", align_corners=False)
                hs = hs + self.upsample_convs[s](up)
            else:
                hs = self.feature_mlps[s](f4)
            hq, commit, idx, perp = self._patterns(s, hs, y_hat)
            if commit is not None:
                commitment = commitment + commit
                codes[f"cspc{s + 1}"], perplexity[f"cspc{s + 1}"] = idx, perp
            yb = y_hat[:, :, None, None].expand(-1, -1, *hq.shape[-2:])
            conds.append(torch.cat([hq, yb], 1))

        logdet = y.new_zeros(y.shape[0])
        zs = []
        for s in range(LEVELS):
            z, ld = self.flows[s](h_in[s], conds[s])
            logdet = logdet + ld
            if self.cfg.latent == "concept":
                mean = self.latent_mean[s](y_hat)[:, :, None, None]
                scale = F.softplus(self.latent_scale[s](y_hat)) + 1e-3
                z = (z - mean) / scale[:, :, None, None]
                if self.cfg.latent_logdet:
                    logdet = logdet - z.shape[-1] * z.shape[-2] * torch.log(scale).sum(1)
            zs.append(z)
        fusion_cond = conds[LEVELS]
        smallest = zs[-1].shape[-2:]
        if fusion_cond.shape[-2:] != smallest:
            fusion_cond = F.interpolate(fusion_cond, size=smallest, mode="bilinear", align_corners=False)
        u, ld = self.fusion(zs, fusion_cond)
        return VQFlowOutput(list(u), logdet + ld, commitment, concept, codes, perplexity)

    def quantizers(self) -> dict[str, VectorQuantizer]:
        """The named codebooks ('cpc', 'cspc1'..'cspc4'); empty without quantization."""
        if not self.cfg.quantize:
            return {}
        return {"cpc": self.cpc, **{f"cspc{i + 1}": q for i, q in enumerate(self.cspc)}}


def nll_per_dim(out: VQFlowOutput) -> torch.Tensor:
    """Per-image negative log-likelihood in nats per dimension (B,), Gaussian constant included."""
    dims = sum(u[0].numel() for u in out.u)
    sq = sum(0.5 * u.pow(2).flatten(1).sum(1) for u in out.u)
    return (sq - out.logdet) / dims + 0.5 * math.log(2 * math.pi)


def vqflow_loss(out: VQFlowOutput, commitment_weight: float = 1.0) -> torch.Tensor:
    """Training loss (METHOD.md 5): mean NLL per dimension plus the commitment terms."""
    return nll_per_dim(out).mean() + commitment_weight * out.commitment
