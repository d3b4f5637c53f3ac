"""The whole inference path in one module: frozen backbone, VQ-Flow head, scoring."""

from __future__ import annotations

import torch
from torch import nn

from vqflow.config import ScoreConfig
from vqflow.model.layers import pool_features
from vqflow.model.scores import Scored, ScoreStats, log_likelihood_maps, score_batch
from vqflow.model.vqflow import VQFlow, VQFlowOutput


class AnomalyDetector(nn.Module):
    """images (B, 3, S, S), ImageNet-normalised -> (image scores (B,), maps (B, S, S), concept (B,))."""

    def __init__(self, backbone: nn.Module, head: VQFlow, score: ScoreConfig, stats: ScoreStats | None = None):
        super().__init__()
        self.backbone, self.head, self.score_cfg = backbone, head, score
        self.stats = stats if score.normalization == "train" else None

    def score_features(self, feats: list[torch.Tensor], size: int) -> tuple[Scored, VQFlowOutput]:
        """Scores from pooled features (h1, h2, h3, f4); the head must be in eval mode."""
        out = self.head(feats)
        loglik = log_likelihood_maps(out.u, size)
        s = self.score_cfg
        return score_batch(loglik, s.image_map, s.pixel_map, s.topk, s.blur_sigma, self.stats), out

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            feats = pool_features(self.backbone(images))
        scored, out = self.score_features(feats, images.shape[-1])
        return scored.score, scored.pixel_map, out.concept
