"""The flows' condition kept apart from its broadcast and quantized parts, so that a 3x3 convolution of
it costs a fraction of the dense one.

A flow level's condition is cat(h, y_hat) per pixel (METHOD.md 3): pattern features h and one global
vector y_hat per image, the same at every pixel. Every coupling block convolves it (3x3, P + 2D = 160
channels in the fast preset), which is most of the head's work. Convolved term by term, the same sum
is exact and cheaper:
- `BroadcastCondition` (training, and inference without quantized patterns): h densely; y_hat's
  share on a map of at most 3x3 pixels, whose centre stands for every interior pixel and whose
  rim for the borders (`broadcast_conv3x3`);
- `QuantizedCondition` (inference): h = PE + c[k] is also a fixed positional map and one codebook
  entry per pixel: the positional map is convolved once per call and the codebook becomes a per-tap
  table gathered by code index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def broadcast_conv3x3(y: torch.Tensor, weight: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """F.conv2d(y broadcast to (B, D, h, w), weight (O, D, 3, 3), padding=1), (B, O, h, w).

    Its output takes at most 9 values per image: interior, 4 edges, 4 corners. They are convolved on a
    min(h, 3) x min(w, 3) map and stretched, the centre row and column repeated (expand + cat, whose
    backward is a sum)."""
    small = F.conv2d(y[:, :, None, None].expand(-1, -1, min(h, 3), min(w, 3)), weight, padding=1)
    return _stretch(_stretch(small, h, 2), w, 3)


def _stretch(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """A size-3 axis `dim` of t to size n: first, the middle one n - 2 times, last (n <= 3: t as is)."""
    if n <= 3:
        return t
    shape = [-1] * t.dim()  # -1 keeps a size (the batch stays dynamic in an exported graph)
    shape[dim] = n - 2
    return torch.cat([t.narrow(dim, 0, 1), t.narrow(dim, 1, 1).expand(shape), t.narrow(dim, 2, 1)], dim)


@dataclass
class BroadcastCondition:
    """cat(local, y broadcast over H x W) without building the broadcast: the dense condition in training.

    local: (B, C, H, W) pattern features; y: (B, D) concept prototypes.
    """

    local: torch.Tensor
    y: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Shape of the dense condition, (B, C + D, H, W)."""
        b, c, h, w = self.local.shape
        return (b, c + self.y.shape[1], h, w)

    def dense(self) -> torch.Tensor:
        """The condition as one (B, C + D, H, W) tensor."""
        yb = self.y[:, :, None, None].expand(-1, -1, *self.local.shape[-2:])
        return torch.cat([self.local, yb], 1)

    def conv3x3(self, weight: torch.Tensor) -> torch.Tensor:
        """F.conv2d(self.dense(), weight, padding=1) for weight (O, C + D, 3, 3)."""
        c = int(self.local.shape[1])
        h, w = int(self.local.shape[2]), int(self.local.shape[3])
        return F.conv2d(self.local, weight[:, :c], padding=1) + broadcast_conv3x3(self.y, weight[:, c:], h, w)


@dataclass
class QuantizedCondition:
    """cat(pe + codes[idx][:, :P], y + codes[idx][:, P:], y) without building it.

    pe: (1, P, H, W) positional map; y: (B, D) concept prototypes; idx: (B, H, W) code indices;
    codes: (K, P + D) codebook (the residuals added to the anchor cat(pe, y)).
    """

    pe: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor
    codes: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Shape of the dense condition, (B, P + 2D, H, W)."""
        b, h, w = self.idx.shape
        return (b, self.pe.shape[1] + 2 * self.y.shape[1], h, w)

    def dense(self) -> torch.Tensor:
        """The condition as one (B, P + 2D, H, W) tensor (what training convolves)."""
        b, h, w = self.idx.shape
        p = self.pe.shape[1]
        q = self.codes[self.idx].permute(0, 3, 1, 2)
        yb = self.y[:, :, None, None].expand(-1, -1, h, w)
        return torch.cat([self.pe.expand(b, -1, -1, -1) + q[:, :p], yb + q[:, p:], yb], 1)

    def conv3x3(self, weight: torch.Tensor) -> torch.Tensor:
        """F.conv2d(self.dense(), weight, padding=1) for weight (O, P + 2D, 3, 3), by lookups."""
        # int(): while tracing for export these sizes become constants of the graph (only the
        # batch stays dynamic), so the lookup tables below fold into constants at load.
        h, w = int(self.idx.shape[1]), int(self.idx.shape[2])
        p, d = int(self.pe.shape[1]), int(self.y.shape[1])
        k, out = int(self.codes.shape[0]), int(weight.shape[0])
        pos = F.conv2d(self.pe, weight[:, :p], padding=1)  # (1, O, H, W), once for the batch
        # Per tap t and code j: table[t, j] = W_t @ codes[j]; row k (a zero vector) stands for padding.
        table = torch.einsum("octs,jc->tsjo", weight[:, : p + d], self.codes).reshape(9, k, out)
        table = torch.cat([table, table.new_zeros(9, 1, out)], 1).reshape(9 * (k + 1), out)
        padded = F.pad(self.idx, (1, 1, 1, 1), value=k)
        taps = [padded[:, dy : dy + h, dx : dx + w] + (3 * dy + dx) * (k + 1) for dy in range(3) for dx in range(3)]
        rows = torch.stack(taps, -1).reshape(-1, 9)
        if torch.onnx.is_in_onnx_export():
            codes = F.embedding(rows, table).sum(1)  # Gather + ReduceSum: every exporter knows them
        else:
            codes = F.embedding_bag(rows, table, mode="sum")
        codes = codes.reshape(-1, h, w, out).permute(0, 3, 1, 2)
        # The global vector is the same at every pixel (twice: in the anchor and on its own).
        return pos + codes + broadcast_conv3x3(self.y, weight[:, p : p + d] + weight[:, p + d :], h, w)
