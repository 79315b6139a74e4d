"""The train/val/test cases of Baharoon et al.'s released code, behind the preset option ``split=paper``
(which ``paper=1`` sets) for Montgomery, Shenzhen, BTCV, AMOS and MSD Heart.

Released code: ``MohammedSB/DINOv2ForRadiology`` at ``cb91e01``; ``<file>:<line>`` below is relative
to ``dinov2/data/datasets/``; ``exprements.ipynb`` and ``run.sh`` are at the repository root (``run.sh``
and the notebook's cell outputs at the commit named).
Each ``make_splits`` picks cases *by position* in ``os.listdir`` of one folder and moves them away, so
later positions refer to the list left after the earlier picks. The authors' folders were Windows
drives under WSL (``/mnt/z``, ``/mnt/d``), which list a folder in NTFS order: names compared
upper-cased. radprobe sorts the same way. The BTCV slice counts the code records confirm it
(``btcv_slice.py:28-29``: 2,013 train and 1,766 val slices are the even and odd BTCV cases).
docs/paper-fidelity.md ("## Datasets") lists each choice with its test.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from radprobe.data.records import Record
from radprobe.data.spec import Spec
from radprobe.errors import DataError

# BTCV's 30 labelled volumes (RawData/Training): img0001-0010 and img0021-0040.
BTCV_CASES = (*range(1, 11), *range(21, 41))
# MSD Task02_Heart's 20 labelled volumes (imagesTr/la_XXX.nii.gz).
HEART_CASES = (3, 4, 5, 7, 9, 10, 11, 14, 16, 17, 18, 19, 20, 21, 22, 23, 24, 26, 29, 30)
AMOS_CT_LABELLED = 300  # AMOS22 imagesTr + imagesVa, CT (ids <= 500): 200 + 100
MONTGOMERY_IMAGES = 138
SHENZHEN_MASKED = 566


def wants_paper_split(spec: Spec) -> bool:
    """Whether ``split=paper`` is in effect; a value other than paper (or empty) is one line."""
    value = (spec.options.get("split") or "").strip().lower()
    if not value:
        return False
    if value != "paper":
        raise DataError(f"split={spec.options['split']!r}: expected paper (or nothing, for radprobe's rule)")
    if spec.options.get("patients"):
        raise DataError(
            f"{spec.scheme}: split=paper fixes every case's split; drop patients= (or add split= to use "
            "radprobe's carve with paper=1)"
        )
    return True


def evenly_spaced(n: int, k: int) -> list[int]:
    """``np.arange(0, n, n / k).round()``: the released AMOS / MSD rule (numpy rounds halves to even)."""
    return [int(i) for i in np.arange(0, n, n / k).round()]


def stepped(n: int, k: int) -> list[int]:
    """``range(0, n, ceil(n / k))``: the released Montgomery and Shenzhen rule."""
    return list(range(0, n, math.ceil(n / k)))


def listing_order(names: list[str]) -> list[str]:
    """Names as NTFS lists them (upper-cased comparison), as the authors' ``os.listdir`` saw them."""
    return sorted(names, key=lambda n: (n.upper(), n))


def pick(names: list[str], picks: list[tuple[str, list[int]]], rest: str | None) -> dict[str, str]:
    """Name -> split: each (split, positions) takes those positions of the names still left, then
    ``rest`` (if given) takes what remains. Names no split takes are left out."""
    left = list(names)
    out: dict[str, str] = {}
    for split, positions in picks:
        chosen = [left[i] for i in positions]
        out.update(dict.fromkeys(chosen, split))
        taken = set(chosen)
        left = [n for n in left if n not in taken]
    if rest is not None:
        out.update(dict.fromkeys(left, rest))
    return out


def apply(records: list[Record], assign: dict[str, str]) -> list[Record]:
    """Records with the split ``assign`` gives their sample id; records it does not name are dropped."""
    return [replace(r, split=assign[r.sample_id]) for r in records if r.sample_id in assign]


def _case_of(r: Record) -> int | None:
    digits = "".join(c if c.isdigit() else " " for c in r.sample_id).split()
    return int(digits[-1]) if digits else None


def _check_cases(records: list[Record], cases: tuple[int, ...], what: str, fmt: str, where: str) -> None:
    """One line naming the cases the paper's split needs but ``records`` lack, or holds beyond them."""
    have = {_case_of(r) for r in records}
    missing = [fmt.format(c) for c in cases if c not in have]
    extra = sorted(r.sample_id for r in records if _case_of(r) not in cases)
    if missing or extra:
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += (
            [f"not among them: {', '.join(extra[:10])}{' ...' if len(extra) > 10 else ''}"] if extra else []
        )
        raise DataError(f"split=paper needs {what} in {where}: {'; '.join(parts)}")


def btcv_split(records: list[Record], where: str) -> list[Record]:
    """Train = the even-numbered volumes, test = the odd-numbered ones, val = none (radprobe carves one).

    ``btcv.py:169-177`` (``make_splits``) moves the even *positions* of the sorted ``Training/img``
    listing (img0001, img0003, ..., img0039) to ``val/``, and the launch lines use that folder as the
    test set (``run.sh`` at ``92f7943``: ``--train-dataset BTCV:split=TRAIN --test-dataset
    BTCV:split=VAL``; the line it replaced, at ``8f6f2df``, named ``split=TEST``). BTCV's own
    ``Testing`` volumes have no labels (``btcv.py:52, 102``), so no other test set could be scored,
    and with the test set named VAL no validation set is built (``eval/utils.py:613-622``).
    """
    _check_cases(
        records, BTCV_CASES, "BTCV's 30 labelled volumes (img0001-0010, img0021-0040)", "img{:04d}", where
    )
    ordered = sorted(records, key=lambda r: _case_of(r) or 0)
    return apply(records, {r.sample_id: "test" if i % 2 == 0 else "train" for i, r in enumerate(ordered)})


def amos_split(records: list[Record], listed: list[str], where: str) -> list[Record]:
    """80 / 20 / 50 of the 300 labelled CT volumes, by position; the other 150 are left out.

    ``exprements.ipynb`` cell 11 (added at ``152416b``; the draw is commented out once it had run; its
    first draft at ``c12bdc9`` could not run): from ``images/`` (300 volumes), train takes positions
    ``np.arange(0, 300, 300/80).round()``, val then ``np.arange(0, 220, 220/20).round()`` of those
    left, test then ``np.arange(0, 200, 200/50).round()``; ``amos.py:26-28`` records the resulting
    11,350 / 2,770 / 7,004 slices.
    """
    have = {r.sample_id for r in records}
    missing = [n for n in listed if n not in have]
    if missing:
        shown = ", ".join(missing[:10]) + (f" ... ({len(missing)} in all)" if len(missing) > 10 else "")
        raise DataError(
            f"split=paper needs AMOS22's {AMOS_CT_LABELLED} labelled CT volumes in {where}: missing {shown}"
        )
    if len(records) != AMOS_CT_LABELLED:
        raise DataError(
            f"split=paper picks by position among AMOS22's {AMOS_CT_LABELLED} labelled CT volumes "
            f"(dataset.json training + validation, ids <= 500); {where} lists {len(records)}"
        )
    names = listing_order([r.sample_id for r in records])
    picks = [
        ("train", evenly_spaced(300, 80)),
        ("val", evenly_spaced(220, 20)),
        ("test", evenly_spaced(200, 50)),
    ]
    return apply(records, pick(names, picks, rest=None))


def heart_split(records: list[Record], where: str) -> list[Record]:
    """12 / 4 / 4 volumes: test = positions 0, 5, 10, 15 of the 20, val = 0, 4, 8, 12 of the 16 left.

    Not in the released code, which only reads ready ``train/ val/ test`` folders (``msd_heart.py``).
    Inferred from it: ``msd_heart.py:26-28`` records 1,339 / 450 / 482 slices (about 12 / 4 / 4
    volumes), the train set of ``exprements.ipynb`` at ``d5fa1e4`` runs from ``la_005_000.npy`` to
    ``la_030_109.npy`` (1,339 slices), and the same authors' MSD split (``data_split`` in
    ``exprements.ipynb`` cell 1, written for Spleen) takes test first, then val from what is
    left, each ``np.arange(0, n, n / k).round()``. With k = 4 and 4 its train set runs from la_005 to
    la_030 as observed. Taking val first instead gives the same train set with val and test swapped;
    ``data_split`` takes test first.
    """
    _check_cases(
        records, HEART_CASES, "Task02_Heart's 20 labelled volumes (la_003 ... la_030)", "la_{:03d}", where
    )
    names = listing_order([r.sample_id for r in records])
    return apply(
        records, pick(names, [("test", evenly_spaced(20, 4)), ("val", evenly_spaced(16, 4))], "train")
    )


def _by_position(
    records: list[Record], total: int, test: int, val: int, what: str, where: str
) -> list[Record]:
    if len(records) != total:
        raise DataError(f"split=paper picks by position among the {total} {what}; {where} has {len(records)}")
    names = listing_order([r.sample_id for r in records])
    left = total - test
    return apply(records, pick(names, [("test", stepped(total, test)), ("val", stepped(left, val))], "train"))


def montgomery_split(records: list[Record], images: list[str], where: str) -> list[Record]:
    """69 / 23 / 46: test = every 3rd image from the first, val = every 4th of the 92 left
    (``mc.py:118-130``). ``images``: every image in CXR_png, so an image without its masks is named."""
    unmasked = sorted(set(images) - {r.sample_id for r in records})
    if len(images) == MONTGOMERY_IMAGES and unmasked:
        raise DataError(
            f"split=paper needs both lung masks of all {MONTGOMERY_IMAGES} images in {where}: "
            f"missing for {', '.join(unmasked)}"
        )
    return _by_position(
        records, MONTGOMERY_IMAGES, 46, 23, "Montgomery images (CXR_png with both masks)", where
    )


def shenzhen_split(records: list[Record], where: str) -> list[Record]:
    """361 / 91 / 114: test = every 5th masked image from the first, val = every 5th of the 452 left
    (``shenzhen.py:109-127``; images without a mask are dropped first, l.113-117)."""
    return _by_position(records, SHENZHEN_MASKED, 114, 91, "Shenzhen images with a mask", where)
