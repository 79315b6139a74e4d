"""Normalised surface Dice (NSD, Nikolov et al. 2021): surfaces by 1-connected erosion, Euclidean
distances by scipy's distance transform in the voxel spacing's unit (mm), else in pixels.

Checked against MONAI's ``compute_surface_dice`` (which measures with a KD-tree) and a brute force
over every pair of surface voxels (``tests/segmentation/test_seg_metrics_nsd_pooled.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a 1-connected neighbour outside it (the image border counts as outside)."""
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask)


def _box(mask: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of ``mask`` grown by one voxel (clipped to the array): surfaces and
    distances inside it are those of the whole array, at a fraction of the cost for small organs."""
    out = []
    for ax in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        out.append(slice(max(int(hit[0]) - 1, 0), int(hit[-1]) + 2))
    return tuple(out)


def surface_dice(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    tolerance: float,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Per-foreground-class normalised surface Dice of one case at ``tolerance`` (mm with
    ``spacing``, else pixels): surface voxels of either mask within the tolerance of the other
    surface, over all surface voxels. NaN where the class is absent from ``gt``; 0 where only the
    prediction lacks it."""
    from scipy import ndimage

    sp = np.ones(gt.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    out = np.full(num_classes - 1, np.nan)
    for c in range(1, num_classes):
        g, p = gt == c, pred == c
        if not g.any():
            continue
        if not p.any():
            out[c - 1] = 0.0
            continue
        box = _box(g | p)
        sg, sp_ = _surface(g[box]), _surface(p[box])
        # distance of every voxel to the nearest voxel of the other surface, in the spacing's unit
        to_gt = ndimage.distance_transform_edt(~sg, sampling=sp)[sp_]
        to_pred = ndimage.distance_transform_edt(~sp_, sampling=sp)[sg]
        ok = int((to_gt <= tolerance).sum()) + int((to_pred <= tolerance).sum())
        out[c - 1] = ok / (len(to_gt) + len(to_pred))
    return out
