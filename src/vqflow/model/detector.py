"""The one inference module: images -> backbone -> pooled features -> VQ-Flow head -> Prediction.

`vqflow test`, `vqflow predict`, fit-time calibration, the Python API and the ONNX export all
run this module; nothing else runs a backbone on an image or turns latents into scores.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from vqflow.calibration import Calibration
from vqflow.errors import VQFlowError
from vqflow.model.layers import pool_features
from vqflow.model.scores import absolute_nll_map, log_likelihood_maps, score_batch, score_map, topk_mean
from vqflow.model.vqflow import VQFlow, nll_per_dim

MAPS = ("mul", "add", "nll")
IMAGE_SCORES = ("local_knn", "combined", "map")


@dataclass
class Prediction:
    """What the detector says about a batch; maps are at the model's input size."""

    score: torch.Tensor  # (B,) image anomaly score (higher = more anomalous)
    anomaly_map: torch.Tensor  # (B, H, W) pixel anomaly map
    concept: torch.Tensor  # (B,) long: the learned concept (CPC code) of each image
    codes: dict[str, torch.Tensor] = field(default_factory=dict)  # codebook level -> code indices
    evidence: torch.Tensor | None = None  # (B, K) the image score's components before standardisation


class Detector(nn.Module):
    """Frozen backbone + VQ-Flow head + scoring, with its calibration as state.

    images: (B, 3, H, W), ImageNet-normalised, at the size the head was trained on.
    Scoring (METHOD.md 6): the pixel map is `pixel_map`, blurred by `blur_sigma` px;
    `normalization` "image" makes maps relative to each image's most normal pixel, "train"
    standardises them by the training-normal statistics held in `calibration.stats`.
    The image score (`image_score`):
    - "map", the paper's: the top-`topk` mean of the `image_map`;
    - "local_knn": local and global evidence, the top-`topk` mean of the absolute NLL map and
      the distance of the image's global feature (the unit-length mean of f4) to its `knn_k`-th
      nearest training normal in `knn_bank` (set by calibration), each standardised by the
      held-out normals (`calibration.score_center`, `score_scale`) and summed. The local part
      is relative: minus the mean local part (`knn_local`) of the image's `local_neighbours`
      nearest training normals, so that a rare but normal look is judged against training
      images that share it (0, or no `knn_local`: absolute);
    - "combined": the same local evidence with the image's NLL per dimension under the flow
      as the global part.
    A relative map discards what differs most between a normal image and one unlikely
    everywhere; the flow's image NLL ranks some unseen kinds of image as more likely than
    normal ones (benchmarks/results/image_score_*.md, docs/RESULTS.md section 5).
    `autocast`: the backbone's compute type under torch.autocast (fp16 or bf16), None for its
    own (fp32); its features reach the head in fp32 whatever it is, so the flows stay fp32.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: VQFlow,
        *,
        image_map: str = "mul",
        pixel_map: str = "add",
        topk: float = 0.03,
        blur_sigma: float = 0.0,
        normalization: str = "image",
        image_score: str = "map",
        knn_k: int = 10,
        local_neighbours: int = 0,
        calibration: Calibration | None = None,
        autocast: torch.dtype | None = None,
    ):
        super().__init__()
        if image_map not in MAPS or pixel_map not in MAPS:
            raise VQFlowError(f"score maps must be among {', '.join(MAPS)}, got {image_map!r} and {pixel_map!r}")
        if normalization not in ("image", "train"):
            raise VQFlowError(f"score normalization must be 'image' or 'train', got {normalization!r}")
        if image_score not in IMAGE_SCORES:
            raise VQFlowError(f"the image score must be one of {', '.join(IMAGE_SCORES)}, got {image_score!r}")
        self.backbone, self.head = backbone, head
        self.image_map, self.pixel_map, self.topk, self.blur_sigma = image_map, pixel_map, topk, blur_sigma
        self.normalization, self.image_score, self.knn_k = normalization, image_score, knn_k
        self.local_neighbours = local_neighbours
        self.calibration = calibration or Calibration()
        self.autocast = autocast
        # (N, C) unit-length global features of training normals, under image_score=local_knn,
        # and (N,) their local evidence (absolute), what a new image's local part is taken relative to
        self.register_buffer("knn_bank", torch.zeros(0, 0), persistent=False)
        self.register_buffer("knn_local", torch.zeros(0), persistent=False)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Pooled backbone features (h1, h2, h3, f4), fp32: what the head (and the feature cache) takes."""
        if self.autocast is None:
            with torch.no_grad():
                return pool_features(self.backbone(images))
        with torch.no_grad(), torch.autocast(images.device.type, dtype=self.autocast):
            maps = self.backbone(images)
        return pool_features([m.float() for m in maps])

    def log_likelihood(
        self, feats: list[torch.Tensor], size: tuple[int, int]
    ) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """Per-scale log-likelihood maps (B, 3, H, W) at `size`, the codes and the concepts."""
        out = self.head(feats)
        return log_likelihood_maps(out.u, size), out.codes, out.concept

    def predict_features(self, feats: list[torch.Tensor], size: tuple[int, int], knn_skip: int = 0) -> Prediction:
        """Prediction from pooled features (the head must be in eval mode); `knn_skip` 1 scores
        training normals that are in `knn_bank` themselves (calibration)."""
        out = self.head(feats)
        loglik = log_likelihood_maps(out.u, size)
        stats = None
        if self.normalization == "train":
            stats = self.calibration.stats
            if stats is None:
                raise VQFlowError("score.normalization=train needs training statistics; calibrate the detector first")
        if self.image_score == "map":
            scored = score_batch(loglik, self.image_map, self.pixel_map, self.topk, self.blur_sigma, stats)
            pixel, evidence = scored.pixel_map, scored.score[:, None]
        else:
            pixel = score_map(loglik, self.pixel_map, self.blur_sigma, stats)
            local = topk_mean(absolute_nll_map(loglik, self.blur_sigma), self.topk)
            if self.image_score == "local_knn":
                glob, neighbours = self.knn_evidence(feats[3], knn_skip)
                if self.knn_local.numel() and neighbours.shape[1]:
                    local = local - self.knn_local[neighbours].mean(1).to(local.dtype)
            else:
                glob = nll_per_dim(out)
            evidence = torch.stack([local, glob.to(local.dtype)], 1)
        return Prediction(self.standardised_sum(evidence), pixel, out.concept, out.codes, evidence)

    @staticmethod
    def global_feature(f4: torch.Tensor) -> torch.Tensor:
        """(B, C) unit-length spatial mean of the last backbone stage: what the k-NN term compares."""
        return nn.functional.normalize(f4.mean(dim=(2, 3)), dim=1)

    def knn_evidence(self, f4: torch.Tensor, skip: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) Euclidean distance of each image's global feature to its (`knn_k` + `skip`)-th
        nearest one in `knn_bank`, and (B, L) the bank rows of its `local_neighbours` nearest ones
        (L fewer where the bank is smaller; 0 columns when local_neighbours is 0); skip 1 leaves a
        training image's own entry out. Without `knn_local` the local part ignores the rows."""
        bank = self.knn_bank
        if bank.numel() == 0:
            raise VQFlowError("score.image_score=local_knn needs the training normals' features; calibrate first")
        sim = self.global_feature(f4) @ bank.t()
        n = bank.shape[0]
        near = min(max(self.knn_k, self.local_neighbours) + skip, n)
        values, rows = torch.topk(sim, near, dim=1)
        kth = values[:, min(self.knn_k + skip, n) - 1]
        distance = (2.0 - 2.0 * kth).clamp_min(0.0).sqrt()
        return distance, rows[:, skip : skip + max(self.local_neighbours, 0)]

    def standardised_sum(self, evidence: torch.Tensor) -> torch.Tensor:
        """The image score from its components (B, K): sum_k (e_k - center_k) / scale_k with the
        calibration's held-out statistics (calibration.standardised_sum is the same in numpy); the plain
        sum before calibration."""
        cal = self.calibration
        if not cal.score_center:
            return evidence.sum(1)
        center = torch.tensor(cal.score_center, dtype=evidence.dtype, device=evidence.device)
        scale = torch.tensor(cal.score_scale, dtype=evidence.dtype, device=evidence.device)
        return ((evidence - center) / scale).sum(1)

    def forward(self, images: torch.Tensor) -> Prediction:
        return self.predict_features(self.features(images), (int(images.shape[-2]), int(images.shape[-1])))


class _ScoredHead(nn.Module):
    """Head and scoring with tensor inputs and outputs only, for tracing."""

    def __init__(self, detector: Detector, size: tuple[int, int]):
        super().__init__()
        self.detector, self.size = detector, size

    def forward(
        self, h1: torch.Tensor, h2: torch.Tensor, h3: torch.Tensor, f4: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pred = self.detector.predict_features([h1, h2, h3, f4], self.size)
        return pred.score, pred.anomaly_map, pred.concept


def frozen_forward(
    det: Detector, size: tuple[int, int]
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The detector's own forward for inputs of `size`, images -> (score, anomaly_map, concept),
    with the head and scoring traced, frozen and optimised by TorchScript (same outputs, about
    1.2-1.3x faster on a CPU: benchmarks/results/predict.json). The backbone stays eager
    (freezing slows it). Codes are not returned; `det(images)` gives them."""
    det.eval()
    param = next(det.head.parameters())
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on the sizes it fixes
        example = det.features(torch.zeros(2, 3, *size, device=param.device, dtype=param.dtype))
        traced = torch.jit.trace(_ScoredHead(det, size).eval(), tuple(example), check_trace=False)
        head = torch.jit.optimize_for_inference(torch.jit.freeze(traced))

    def forward(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return head(*det.features(images))

    return forward
