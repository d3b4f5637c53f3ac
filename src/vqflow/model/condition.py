"""The flows' condition kept in its quantized form, so that a 3x3 convolution of it is table lookups.

A flow level's condition is cat(PE + c[k], y_hat + c'[k], y_hat) per pixel (METHOD.md 3): a fixed
positional map, one codebook entry per pixel and one global vector per image. Every coupling block
convolves it (3x3, P + 2D = 160 channels in the fast preset), which is most of the head's work.
Convolved term by term, the same sum is exact and cheap: the positional map once per call, the
codebook as a per-tap table gathered by code index, the global vector as a matrix product with
the in-bounds mask of each tap. Used at inference (no autograd); training convolves the dense tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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
        # The global vector is the same at every pixel: each tap adds W_t @ y where it is in bounds.
        per_tap = torch.einsum("octs,bc->bots", weight[:, p : p + d] + weight[:, p + d :], self.y).reshape(-1, out, 9)
        ones = F.pad(self.y.new_ones(1, 1, h, w), (1, 1, 1, 1))
        inside = torch.cat([ones[:, :, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], 1)
        glob = (per_tap @ inside.reshape(9, h * w)).reshape(-1, out, h, w)
        return pos + codes + glob
