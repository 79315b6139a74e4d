"""Chest X-ray lung segmentation presets: Montgomery (left/right masks) and Shenzhen (``_mask`` files)."""

from __future__ import annotations

import os
from pathlib import Path

from radprobe.data.formats.common import Source
from radprobe.data.presets.common import finish, root_dir
from radprobe.data.presets.paper_splits import montgomery_split, shenzhen_split, wants_paper_split
from radprobe.data.problems import Problem, error, warning
from radprobe.data.readers import IMAGE_SUFFIXES, natural_key
from radprobe.data.records import ImageRef, Record
from radprobe.data.spec import Spec
from radprobe.errors import DataError

SHENZHEN_MASK_DIRS = ("mask", "masks", "Mask", "Masks", "ManualMask")


def _images(d: Path) -> dict[str, Path]:
    """Stem -> file for the images of a folder, in natural order."""
    files = [p for p in d.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)]
    return {p.stem: p for p in sorted(files, key=lambda p: natural_key(p.name))}


def _need_dir(root: Path, rel: str, scheme: str, what: str) -> Path:
    d = root / rel
    if not d.is_dir():
        raise DataError(f"{scheme}: missing folder {rel}/ in {root} ({what})")
    return d


def index_montgomery(spec: Spec) -> Source:
    root = root_dir(spec)
    scheme = spec.scheme
    mode = (spec.options.get("lungs") or "separate").strip().lower()
    if mode not in ("separate", "merged"):
        raise DataError(f"lungs={mode!r}: expected separate or merged")
    cxr = _need_dir(root, "CXR_png", scheme, "the radiographs")
    left = _need_dir(root, "ManualMask/leftMask", scheme, "left-lung masks")
    right = _need_dir(root, "ManualMask/rightMask", scheme, "right-lung masks")
    images, lefts, rights = _images(cxr), _images(left), _images(right)
    issues: list[Problem] = []
    records: list[Record] = []
    for stem, img in images.items():
        missing = [
            f"{d.relative_to(root)}/{img.name}" for d, m in ((left, lefts), (right, rights)) if stem not in m
        ]
        if missing:
            issues.append(error(f"no mask {' or '.join(missing)} for image {img}"))
            continue
        lm, rm = lefts[stem], rights[stem]
        # The right mask is stored relative to the left one so the digest is location-independent.
        mask = ImageRef(
            str(lm), "mask-set" if mode == "separate" else "mask-union", key=os.path.relpath(rm, lm.parent)
        )
        records.append(Record(stem, stem, ImageRef(str(img), "image"), None, mask))
    for masks in (lefts, rights):
        for stem, m in masks.items():
            if stem not in images:
                issues.append(warning(f"mask {m} has no image in {cxr}"))
    classes = ("background", "left lung", "right lung") if mode == "separate" else ("background", "lung")
    conventions = {"lungs": mode}
    paper = wants_paper_split(spec)
    if paper:
        records = montgomery_split(records, list(images), str(cxr))
        conventions["split"] = "paper: 69 / 23 / 46 images by position (mc.py make_splits)"
    return finish(
        spec,
        records,
        "segmentation",
        classes,
        root,
        issues,
        conventions,
        default_name="montgomery",
        patients_allowed=not paper,
        modality="xray",
    )


def _mask_stem(stem: str) -> str:
    return stem[: -len("_mask")] if stem.lower().endswith("_mask") else stem


def index_shenzhen(spec: Spec) -> Source:
    root = root_dir(spec)
    scheme = spec.scheme
    cxr = _need_dir(root, "CXR_png", scheme, "the radiographs")
    mdir = next((root / n for n in SHENZHEN_MASK_DIRS if (root / n).is_dir()), None)
    if mdir is None:
        raise DataError(
            f"{scheme}: missing mask folder in {root}; expected one of {', '.join(SHENZHEN_MASK_DIRS)} "
            "holding CHNCXR_XXXX_Y_mask.png"
        )
    images = _images(cxr)
    masks = {_mask_stem(stem): p for stem, p in _images(mdir).items()}
    issues: list[Problem] = []
    records: list[Record] = []
    unmasked = []
    for stem, img in images.items():
        if stem not in masks:
            unmasked.append(img.name)
            continue
        records.append(
            Record(stem, stem, ImageRef(str(img), "image"), None, ImageRef(str(masks[stem]), "image"))
        )
    if unmasked:
        # Expected: 96 of the 662 released images have no manual mask.
        issues.append(
            warning(
                f"{len(unmasked)} image(s) in {cxr} have no mask in {mdir} and are left out, "
                f"e.g. {unmasked[0]}"
            )
        )
    for stem, m in masks.items():
        if stem not in images:
            issues.append(warning(f"mask {m} has no image {stem}.png in {cxr}"))
    conventions = {"masks": mdir.name}
    paper = wants_paper_split(spec)
    if paper:
        records = shenzhen_split(records, str(cxr))
        conventions["split"] = "paper: 361 / 91 / 114 masked images by position (shenzhen.py make_splits)"
    return finish(
        spec,
        records,
        "segmentation",
        ("background", "lung"),
        root,
        issues,
        conventions,
        default_name="shenzhen",
        patients_allowed=not paper,
        modality="xray",
    )
