"""Ground-truth regions for PRO: 8-connected components of each image's mask."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Connect the 8 neighbours within an image, never across images of the batch.
_PLANAR_8 = np.zeros((3, 3, 3), dtype=bool)
_PLANAR_8[1] = True


def region_weights(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """For each anomalous pixel (in ``maps[masks]`` order), 1 / size of its region; and the region count.

    `masks` is bool (B, H, W). Components are labelled per image with 8-connectivity.
    """
    if not masks.any():
        return np.zeros(0, dtype=np.float64), 0
    labels, n_regions = ndimage.label(masks, structure=_PLANAR_8)
    sizes = np.bincount(labels.ravel())
    inverse_size = np.zeros(len(sizes), dtype=np.float64)
    inverse_size[1:] = 1.0 / sizes[1:]
    return inverse_size[labels[masks]], int(n_regions)
