"""Optional outputs of a segmentation run: predicted masks and overlay PNGs for reports.

Predictions go to ``<out>/predictions/<backbone>__<protocol>/``: 2D cases as PNG class-index maps,
3D cases as NIfTI. A volume read from NIfTI is written back in the closest canonical (RAS+) voxel
order with that image's affine, so it overlays the source scan in any viewer; other volumes keep the
reader's (D, H, W) order with an identity affine. Overlays go to ``<out>/overlays/`` as
``<backbone>__<protocol>__<case>.png``: image | ground truth | prediction, titled, with the backbone,
protocol, case and its foreground Dice beneath (3D: the slice with the most ground-truth foreground).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from radprobe.data import Dataset
from radprobe.segmentation.data import Case

_PALETTE = np.array(
    [
        [0, 0, 0],
        [230, 25, 75],
        [60, 180, 75],
        [0, 130, 200],
        [255, 225, 25],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
        [0, 128, 128],
    ],
    dtype=np.float32,
)


def slug(text: str) -> str:
    """File-name-safe form of a sample id or backbone name."""
    return re.sub(r"[^0-9A-Za-z._-]+", "_", text).strip("_") or "x"


def _colour(label: np.ndarray) -> np.ndarray:
    idx = label.astype(np.int64)
    pal = _PALETTE[np.where(idx == 0, 0, (idx - 1) % (len(_PALETTE) - 1) + 1)]
    return pal


def _gray(img: np.ndarray) -> np.ndarray:
    g = img if img.ndim == 2 else img[..., :3].mean(-1)
    return np.repeat((np.clip(g, 0, 1) * 255).astype(np.float32)[..., None], 3, axis=-1)


def _blend(base: np.ndarray, label: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    m = (label > 0)[..., None]
    return np.where(m, (1 - alpha) * base + alpha * _colour(label), base)


PANELS = ("image", "ground truth", "prediction")


def _dice(gt: np.ndarray, pred: np.ndarray) -> float | None:
    """Foreground Dice of one case (all classes > 0 together); None when both are empty."""
    g, p = gt > 0, pred > 0
    total = int(g.sum() + p.sum())
    return None if total == 0 else 2.0 * int((g & p).sum()) / total


def write_overlay(path: Path, image: np.ndarray, gt: np.ndarray, pred: np.ndarray, caption: str = "") -> None:
    """One PNG: image | image + ground truth | image + prediction (2D arrays of one slice), each panel
    titled, with ``caption`` and the case's foreground Dice beneath."""
    from PIL import Image, ImageDraw

    base = _gray(image)
    panel = np.concatenate([base, _blend(base, gt), _blend(base, pred)], axis=1)
    out = Image.fromarray(np.clip(panel, 0, 255).astype(np.uint8))
    if max(gt.shape) < 256:  # small test images are unreadable at 1:1
        k = int(np.ceil(256 / max(gt.shape)))
        out = out.resize((out.width * k, out.height * k), Image.NEAREST)
    dice = _dice(gt, pred)
    words = " · ".join(x for x in (caption, "" if dice is None else f"foreground Dice {dice:.3f}") if x)
    framed = Image.new("RGB", (out.width, out.height + 36), "white")
    framed.paste(out, (0, 18))
    draw = ImageDraw.Draw(framed)
    width = out.width // 3
    for i, title in enumerate(PANELS):
        draw.text((i * width + 4, 3), title, fill="black")
    draw.text((4, out.height + 21), words, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    framed.save(path)


def overlay_case(
    path: Path, dataset: Dataset, case: Case, gt: np.ndarray, pred: np.ndarray, caption: str = ""
) -> None:
    """Overlay of one case; for a volume, of the slice with the most ground-truth foreground."""
    image = dataset.load_image(case.record)
    if gt.ndim == 3:
        k = int(np.argmax((gt > 0).reshape(gt.shape[0], -1).sum(1)))
        image, gt, pred = image[k], gt[k], pred[k]
        caption = f"{caption} · slice {k}" if caption else f"slice {k}"
    write_overlay(path, image, gt, pred, caption)


def _from_display(pred: np.ndarray, axis: int) -> np.ndarray:
    """Undo ``readers.to_display``: (D, H, W) display order -> canonical RAS+ voxel order."""
    u = pred[:, ::-1, ::-1].transpose(0, 2, 1)
    return np.ascontiguousarray(np.moveaxis(u, 0, axis))


def save_prediction(folder: Path, case: Case, pred: np.ndarray, orient: str = "canonical") -> Path:
    """Write one predicted class map (PNG for 2D, NIfTI for 3D, on its source volume's voxel grid);
    returns its path. ``orient``: how the dataset read the volume (``readers.ReadOptions.orient``)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = slug(case.sample_id)
    if pred.ndim == 2:
        from PIL import Image

        path = folder / f"{name}.png"
        Image.fromarray(pred.astype(np.uint8 if pred.max(initial=0) < 256 else np.uint16)).save(path)
        return path
    import nibabel as nib

    path = folder / f"{name}.nii.gz"
    ref = case.record.image
    if ref.kind == "nifti" and orient == "stored":  # read as stored: only the slicing axis moved
        affine = nib.load(ref.path).affine
        data = np.ascontiguousarray(np.moveaxis(pred, 0, ref.axis))
    elif ref.kind == "nifti":
        affine = nib.as_closest_canonical(nib.load(ref.path)).affine
        data = _from_display(pred, ref.axis)
    else:
        affine, data = np.eye(4), pred
    nib.save(nib.Nifti1Image(data.astype(np.uint8 if data.max(initial=0) < 256 else np.int16), affine), path)
    return path
