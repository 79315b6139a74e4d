"""Format readers. Images come back float32 in [0, 1]; masks as int64 label maps, aligned with images.

Intensity scaling (``ReadOptions``), in order of precedence:

* ``window=(center, width)``: linear window on the stored values (after DICOM rescale slope/intercept,
  so HU for CT), clipped to [0, 1]. Applies to every format.
* ``norm="minmax"`` / ``"percentile"`` (0.5-99.5 %): per image, or per *volume* for volumes and their
  slices, so slices of one volume share a scale.
* ``norm="dtype"``: integers divided by their dtype's maximum (255, 65535), or by ``2**bits - 1`` when
  ``bits`` is set, e.g. ``bits=12`` for 12-bit detector data stored in 16-bit PNGs. Dividing by the
  dtype max (not the image max) keeps intensities comparable across images of one dataset.
* ``norm="auto"`` (default): PNG/JPEG/TIFF/npz/HDF5 unsigned integers -> ``dtype``; signed integers
  and floats outside [0, 1] -> min-max; floats in [0, 1] kept as they are. DICOM -> the file's
  WindowCenter/WindowWidth when present, else min-max. NIfTI -> percentile.

DICOM MONOCHROME1 images are inverted after scaling, so bone is bright as in MONOCHROME2. RGBA drops
alpha; palette images become RGB; RGB stays HxWx3.

Volumes are (D, H, W). With ``orient="canonical"`` (default) NIfTI volumes are first brought to the
closest canonical (RAS+) orientation, then ``D`` runs along canonical ``axis`` (2 = inferior->superior)
and each (H, W) plane is in radiological display orientation (anterior/superior up, patient right on
the left). With ``orient="stored"`` the affine is ignored: the volume is ``np.moveaxis(data, axis, 0)``
of the stored array, so for ``axis=2`` slice k is ``get_fdata()[:, :, k]``, as Baharoon et al.'s
released code slices BTCV, AMOS and MSD Heart. Image and mask go through the same steps
(``read_mask(ref, opts)``), so they stay aligned whatever the affine. DICOM series are stacked in
ascending position along the slice normal (ImagePositionPatient), falling back to InstanceNumber, then
file name.
Multi-frame DICOM files and MedMNIST 3D arrays are read as stored. An ``image-stack`` (a folder of 2D
slice images, e.g. the SARS-CoV-2 CT patient folders) is stacked in natural file-name order (``2.png``
before ``10.png``); colour slices become grayscale.

Masks split over several files (Montgomery's ``leftMask/`` + ``rightMask/``) are ``mask-set`` refs (file
``i`` -> value ``i + 1``) or ``mask-union`` refs (any file -> 1): ``path`` is the first file, ``key``
the others, newline-separated and relative to the first file's folder (so digests do not depend on
where the dataset lives).

``ReadOptions.pad`` zero-pads 2D images centrally to ``pad x pad`` (MedMNIST+ small sizes -> 224).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radprobe.data.records import ImageRef
from radprobe.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
H5_SUFFIXES = (".h5", ".hdf5", ".mat")
VOLUME_KINDS = ("nifti", "dicom-series", "image-stack")
MASK_SET_KINDS = ("mask-set", "mask-union")
NORMS = ("auto", "dtype", "minmax", "percentile")
ORIENTS = ("canonical", "stored")
PERCENTILES = (0.5, 99.5)

log = logging.getLogger(__name__)
_collected: ContextVar[list[str] | None] = ContextVar("radprobe_read_warnings", default=None)
_logged: set[str] = set()


@dataclass(frozen=True)
class ReadOptions:
    """How stored values become [0, 1] intensities (see the module docstring)."""

    window: tuple[float, float] | None = None
    norm: str = "auto"
    bits: int | None = None
    channel: int = 0
    pad: int | None = None
    orient: str = "canonical"  # NIfTI volumes: "canonical" (RAS+, display planes) or "stored"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise DataError(f"norm={self.norm!r}: expected one of {', '.join(NORMS)}")
        if self.orient not in ORIENTS:
            raise DataError(f"orient={self.orient!r}: expected canonical or stored")
        if self.bits is not None and not 1 <= self.bits <= 32:
            raise DataError(f"bits={self.bits}: expected 1..32")
        if self.pad is not None and not 1 <= self.pad <= 8192:
            raise DataError(f"pad={self.pad}: expected a size in pixels (e.g. 224)")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "window": self.window,
            "norm": self.norm,
            "bits": self.bits,
            "channel": self.channel,
        }
        if self.pad is not None:  # only when set, so digests of datasets without padding stay as they were
            out["pad"] = self.pad
        if self.orient != "canonical":  # likewise: digests of canonical datasets stay as they were
            out["orient"] = self.orient
        return out


def kind_of(path: str | Path) -> str | None:
    """ImageRef kind for a path by its suffix (a folder is a DICOM series); None if unsupported."""
    p = Path(path)
    low = p.name.lower()
    if low.endswith(IMAGE_SUFFIXES):
        return "image"
    if low.endswith(DICOM_SUFFIXES):
        return "dicom"
    if low.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if low.endswith(H5_SUFFIXES):
        return "h5"
    if low.endswith(".npz"):
        return "npz"
    if p.is_dir():
        return "dicom-series"
    if p.is_file() and is_dicom_file(p):
        return "dicom"
    return None


def is_dicom_file(path: Path) -> bool:
    """True if the file carries the DICM magic (Part 10 files, with or without a suffix)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def strip_suffix(name: str) -> str:
    """File name without its (double, for .nii.gz) extension."""
    low = name.lower()
    for suffix in (".nii.gz", ".tar.gz"):
        if low.endswith(suffix):
            return name[: -len(suffix)]
    stem, dot, _ = name.rpartition(".")
    return stem if dot and stem else name


# ---------------------------------------------------------------------------- warnings


def read_warning(message: str) -> None:
    """A file that reads, but not as stored: collected by ``collect_warnings`` (``data check``), else
    logged once per process, since the same file is read again for every use."""
    sink = _collected.get()
    if sink is not None:
        sink.append(message)
    elif message not in _logged:
        _logged.add(message)
        log.warning(message)


@contextlib.contextmanager
def collect_warnings() -> Iterator[list[str]]:
    """Collect the ``read_warning`` messages of the reads inside the block, instead of logging them."""
    sink: list[str] = []
    token = _collected.set(sink)
    try:
        yield sink
    finally:
        _collected.reset(token)


# ---------------------------------------------------------------------------- intensity scaling


def apply_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear window: ``center - width/2`` -> 0, ``center + width/2`` -> 1, clipped."""
    lo = center - width / 2.0
    return np.clip((x.astype(np.float32) - np.float32(lo)) / np.float32(width), 0.0, 1.0)


def _minmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    lo, hi = float(np.min(x)), float(np.max(x))
    if hi <= lo:
        return np.zeros_like(x)
    return (x - np.float32(lo)) / np.float32(hi - lo)


def _percentile(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    lo, hi = (float(v) for v in np.percentile(x, PERCENTILES))
    if hi <= lo:
        return _minmax(x)
    return np.clip((x - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)


def _dtype_scale(x: np.ndarray, bits: int | None) -> np.ndarray:
    if bits is not None:
        return np.clip(x.astype(np.float32) / np.float32(2**bits - 1), 0.0, 1.0)
    if x.dtype == np.bool_:
        return x.astype(np.float32)
    if np.issubdtype(x.dtype, np.unsignedinteger):
        return x.astype(np.float32) / np.float32(np.iinfo(x.dtype).max)
    if np.issubdtype(x.dtype, np.integer):
        return _minmax(x)  # signed data (HU, MRI int16, Pillow "I") has no fixed full scale
    x = x.astype(np.float32)
    if x.size and float(np.min(x)) >= 0.0 and float(np.max(x)) <= 1.0:
        return x
    return _minmax(x)


def scale(x: np.ndarray, opts: ReadOptions, *, auto: str = "dtype") -> np.ndarray:
    """Stored values -> float32 [0, 1] following ``opts`` (``auto`` is the format's default norm)."""
    if opts.window is not None:
        out = apply_window(x, *opts.window)
    else:
        norm = auto if opts.norm == "auto" else opts.norm
        if opts.bits is not None and opts.norm == "auto":
            norm = "dtype"  # bits= states the full scale, which only the dtype scaling uses
        if norm == "dtype":
            out = _dtype_scale(x, opts.bits)
        elif norm == "percentile":
            out = _percentile(x)
        else:
            out = _minmax(x)
    return np.ascontiguousarray(out, dtype=np.float32)


# ---------------------------------------------------------------------------- 2D images (Pillow)


def _pil_array(path: str, *, mask: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mask and mode in ("P", "L", "1", "I", "I;16", "I;16B", "I;16L"):
                return np.asarray(im).astype(np.int64)
            if mode == "1":
                im = im.convert("L")
            elif mode == "LA":
                im = im.getchannel(0)
            elif mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            arr = np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]  # drop alpha
    return arr


def _mask_2d(arr: np.ndarray, path: str) -> np.ndarray:
    if arr.ndim == 3:
        if not (np.all(arr[..., 0] == arr[..., 1]) and np.all(arr[..., 0] == arr[..., -1])):
            raise DataError(f"mask {path} is a colour image; expected a single-channel map of class indices")
        arr = arr[..., 0]
    return np.asarray(arr).astype(np.int64)


# ---------------------------------------------------------------------------- DICOM


def _dicom_read(path: str, *, pixels: bool = True) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, force=True, stop_before_pixels=not pixels)
    except FileNotFoundError:
        raise DataError(f"DICOM file not found: {path}") from None
    except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError, TypeError) as e:
        raise DataError(f"cannot read DICOM file {path}: {e}") from None


def dicom_header(path: str) -> Any:
    """DICOM header only (no pixel data), e.g. for PatientID and series geometry."""
    return _dicom_read(path, pixels=False)


def _modality_lut(arr: np.ndarray, ds: Any) -> np.ndarray:
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    return arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _dicom_pixels(ds: Any, path: str) -> np.ndarray:
    try:
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types for codec/format problems
        hint = ""
        if "compressed" in str(e).lower() or "handler" in str(e).lower() or "plugin" in str(e).lower():
            hint = " (compressed DICOM: install pylibjpeg or gdcm)"
        raise DataError(f"cannot decode DICOM pixels in {path}: {e}{hint}") from None
    return np.asarray(arr)


def _first(value: Any) -> float | None:
    """First number of a possibly multi-valued DICOM element (WindowCenter may hold several)."""
    if value is None or isinstance(value, bytes):
        return None
    if not isinstance(value, str):
        with contextlib.suppress(TypeError):
            value = next(iter(value), None)
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _header_window(ds: Any) -> tuple[float, float] | None:
    center, width = _first(getattr(ds, "WindowCenter", None)), _first(getattr(ds, "WindowWidth", None))
    if center is None or width is None or width <= 0:
        return None
    return center, width


def _dicom_scale(values: np.ndarray, ds: Any, opts: ReadOptions) -> np.ndarray:
    """Window/normalise rescaled DICOM values, then undo MONOCHROME1 inversion."""
    if opts.window is None and opts.norm == "auto" and (win := _header_window(ds)) is not None:
        out = apply_window(values, *win)
    else:
        out = scale(values, opts, auto="minmax")
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 1.0 - out
    return np.ascontiguousarray(out, dtype=np.float32)


def read_dicom(path: str, opts: ReadOptions, *, mask: bool = False) -> np.ndarray:
    """One DICOM file: (H, W), (H, W, 3) for colour, or (F, H, W) for multi-frame."""
    ds = _dicom_read(path)
    arr = _dicom_pixels(ds, path)
    if mask:
        return arr.astype(np.int64)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric.startswith(("RGB", "YBR")) or (
        arr.ndim >= 3 and arr.shape[-1] == 3 and int(getattr(ds, "SamplesPerPixel", 1)) == 3
    ):
        bits = int(getattr(ds, "BitsStored", 8) or 8)
        return np.clip(arr.astype(np.float32) / np.float32(2**bits - 1), 0, 1)
    return _dicom_scale(_modality_lut(arr, ds), ds, opts)


def _series_files(folder: str) -> list[str]:
    try:
        names = sorted(os.listdir(folder))
    except OSError as e:
        raise DataError(f"cannot list DICOM series folder {folder}: {e}") from None
    out = []
    for name in names:
        p = os.path.join(folder, name)
        if name.startswith(".") or not os.path.isfile(p):
            continue
        if name.lower().endswith(DICOM_SUFFIXES) or is_dicom_file(Path(p)):
            out.append(p)
    if not out:
        raise DataError(f"DICOM series folder {folder} holds no DICOM files")
    return out


def sort_series(headers: list[Any], files: list[str]) -> list[int]:
    """Order of slices: by position along the slice normal, else InstanceNumber, else file name."""
    try:
        positions = []
        for ds in headers:
            iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
            normal = np.cross(iop[:3], iop[3:])
            positions.append(float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])))
        return sorted(range(len(files)), key=lambda i: (positions[i], files[i]))
    except (AttributeError, TypeError, ValueError):
        pass
    try:
        numbers = [int(ds.InstanceNumber) for ds in headers]
        return sorted(range(len(files)), key=lambda i: (numbers[i], files[i]))
    except (AttributeError, TypeError, ValueError):
        return list(range(len(files)))


def read_dicom_series(folder: str, opts: ReadOptions, *, mask: bool = False) -> np.ndarray:
    """A folder of single-slice DICOM files of one series -> (D, H, W)."""
    files = _series_files(folder)
    datasets = [_dicom_read(f) for f in files]
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for ds in datasets} - {""}
    if len(series) > 1:
        raise DataError(
            f"DICOM folder {folder} mixes {len(series)} series; put each series in its own folder"
        )
    order = sort_series(datasets, files)
    slices = []
    for i in order:
        arr = _dicom_pixels(datasets[i], files[i])
        if arr.ndim != 2:
            raise DataError(f"DICOM series {folder}: {files[i]} is not a single 2D slice (shape {arr.shape})")
        slices.append(arr.astype(np.int32) if mask else _modality_lut(arr, datasets[i]))
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        raise DataError(f"DICOM series {folder}: slices differ in size {sorted(shapes)}")
    vol = np.stack(slices)
    if mask:
        return vol
    return _dicom_scale(vol, datasets[order[0]], opts)


# ---------------------------------------------------------------------------- image stacks (slice folders)


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key ordering embedded numbers by value: ``2.png`` < ``10.png``, ``IM (9)`` < ``IM (10)``."""
    parts = re.split(r"(\d+)", name)
    return tuple((0, int(p), p) if p.isdigit() else (1, p.lower(), p) for p in parts if p)


def stack_files(folder: str) -> list[str]:
    """The 2D image files of a slice folder, in natural order."""
    try:
        names = [n for n in os.listdir(folder) if not n.startswith(".")]
    except OSError as e:
        raise DataError(f"cannot list slice folder {folder}: {e}") from None
    files = [
        os.path.join(folder, n)
        for n in sorted(names, key=natural_key)
        if n.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(folder, n))
    ]
    if not files:
        raise DataError(f"slice folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _gray(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 3:  # slices exported as RGB screenshots: luminance, exact when R == G == B
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            return arr[..., 0]
        return (arr[..., :3].astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)).astype(
            np.float32
        )
    return arr


def read_image_stack(folder: str, opts: ReadOptions, *, mask: bool = False) -> np.ndarray:
    """A folder of 2D slice images -> (D, H, W), slices in natural file-name order."""
    files = stack_files(folder)
    slices = [_gray(_pil_array(f, mask=mask)) for f in files]
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        first = slices[0].shape
        odd = next(f for f, s in zip(files, slices, strict=True) if s.shape != first)
        raise DataError(
            f"slice folder {folder}: slices differ in size ({os.path.basename(files[0])} {first} vs "
            f"{os.path.basename(odd)} {slices[files.index(odd)].shape}); use slices=1 to read them one by one"
        )
    vol = np.stack(slices)
    if mask:
        return vol.astype(np.int32)
    return scale(vol, opts, auto="dtype")


# ---------------------------------------------------------------------------- masks split over files


def mask_set_files(ref: ImageRef) -> list[str]:
    """All files of a ``mask-set``/``mask-union`` ref, the first being ``ref.path``."""
    base = os.path.dirname(ref.path)
    rest = [os.path.normpath(os.path.join(base, k)) for k in (ref.key or "").split("\n") if k]
    return [ref.path, *rest]


def read_mask_set(ref: ImageRef) -> np.ndarray:
    """Combine binary masks (any value > 0 is foreground): file i -> i + 1 (mask-set) or 1 (mask-union)."""
    files = mask_set_files(ref)
    out: np.ndarray | None = None
    for i, f in enumerate(files):
        if not os.path.exists(f):
            raise DataError(f"mask file not found: {f}")
        m = _mask_2d(_pil_array(f, mask=True), f)
        if out is None:
            out = np.zeros(m.shape, dtype=np.int64)
        elif m.shape != out.shape:
            raise DataError(f"mask {f} has shape {m.shape} but {files[0]} has {out.shape}")
        out[m > 0] = 1 if ref.kind == "mask-union" else i + 1
    assert out is not None
    return out


# ---------------------------------------------------------------------------- NIfTI


def to_display(data: np.ndarray, axis: int) -> np.ndarray:
    """Canonical (RAS+) 3D array -> (D, H, W): D along ``axis``, planes in radiological orientation."""
    if axis not in (0, 1, 2):
        raise DataError(f"axis={axis}: expected 0, 1 or 2")
    v = np.moveaxis(data, axis, 0).transpose(0, 2, 1)[:, ::-1, ::-1]
    return np.ascontiguousarray(v)


def orient_volume(data: np.ndarray, axis: int, orient: str) -> np.ndarray:
    """3D array -> (D, H, W): ``to_display`` of a canonical array, or only ``moveaxis`` when ``stored``."""
    if orient != "stored":
        return to_display(data, axis)
    if axis not in (0, 1, 2):
        raise DataError(f"axis={axis}: expected 0, 1 or 2")
    # no transpose or flip: slice k is data[..., k] (axis 2) as the released code saves it
    return np.ascontiguousarray(np.moveaxis(data, axis, 0))


def _nifti_load(path: str) -> Any:
    import nibabel as nib

    try:
        return nib.load(path)
    except FileNotFoundError:
        raise DataError(f"NIfTI file not found: {path}") from None
    except Exception as e:  # nibabel raises assorted errors for corrupt headers
        raise DataError(f"cannot read NIfTI file {path}: {e}") from None


def read_nifti(path: str, opts: ReadOptions, axis: int, *, mask: bool = False) -> np.ndarray:
    """A NIfTI volume -> (D, H, W), canonical display or stored orientation (see module docstring)."""
    import nibabel as nib

    img = _nifti_load(path)
    try:
        if opts.orient != "stored":
            img = nib.as_closest_canonical(img)
        data = np.asarray(img.dataobj) if mask else np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as e:  # truncated/corrupt data surfaces as many error types
        raise DataError(f"cannot read NIfTI data in {path}: {e}") from None
    if data.ndim == 4:
        if not 0 <= opts.channel < data.shape[3]:
            raise DataError(
                f"NIfTI {path} has {data.shape[3]} volumes; channel={opts.channel} is out of range"
            )
        data = data[..., opts.channel]
    elif data.ndim == 2:
        data = data[..., None]
    elif data.ndim != 3:
        raise DataError(f"NIfTI {path} has shape {data.shape}; expected a 3D (or 4D) volume")
    vol = _without_nan(orient_volume(data, axis, opts.orient), path, mask=mask)
    if mask:
        return np.rint(vol).astype(np.int32)  # int32 halves cached masks; callers get int64
    return scale(vol, opts, auto="percentile")


def _without_nan(vol: np.ndarray, path: str, *, mask: bool) -> np.ndarray:
    """NaN voxels (often the outside of a skull-stripped or resampled volume) -> the lowest value (a
    mask's background), with a warning; a NaN would otherwise make the whole volume's scaling NaN."""
    if not np.issubdtype(vol.dtype, np.floating) or not np.isnan(vol.min()):
        return vol  # min() propagates NaN: one pass and no copy for the usual, NaN-free volume
    bad = np.isnan(vol)
    n = int(bad.sum())
    if n == vol.size:
        raise DataError(f"NIfTI {path}: every voxel is NaN; expected a volume of intensities")
    fill = 0.0 if mask else float(vol[~bad].min())
    what = "background (0)" if mask else "the volume's lowest value"
    share = f"{n} of {vol.size} voxels ({100 * n / vol.size:.3g}%)"
    read_warning(f"NIfTI {path}: {share} are NaN; read as {what}")
    out = np.array(vol, copy=True)
    out[bad] = fill
    return out


def nifti_shape(path: str, orient: str = "canonical") -> tuple[int, ...]:
    """Shape of a NIfTI volume after canonical reorientation (or as stored), from the header only."""
    import nibabel as nib

    img = _nifti_load(path)
    shape = tuple(int(s) for s in img.shape[:3])
    if orient == "stored":
        return shape
    ornt = nib.io_orientation(img.affine)
    out = [0, 0, 0]
    for src, (dst, _) in enumerate(ornt[: len(shape)]):
        out[int(dst)] = shape[src]
    return tuple(out)


def volume_depth(ref: ImageRef, orient: str = "canonical") -> int:
    """Number of slices along ``ref.axis`` without loading pixel data (nifti, dicom-series); ``orient``
    as the dataset's ``ReadOptions.orient``, since a NIfTI's stored and canonical axes may differ."""
    if ref.kind == "nifti":
        shape = nifti_shape(ref.path, orient)
        return shape[ref.axis] if len(shape) == 3 else 1
    if ref.kind == "dicom-series":
        return len(_series_files(ref.path))
    if ref.kind == "image-stack":
        return len(stack_files(ref.path))
    raise DataError(f"{ref.path}: cannot slice a {ref.kind!r} image")


# ---------------------------------------------------------------------------- npz / HDF5 arrays


@functools.lru_cache(maxsize=4)
def _npz_array(path: str, key: str, stamp: tuple[int, int]) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            if key not in z.files:
                raise DataError(f"npz file {path} has no array {key!r} (has: {', '.join(z.files)})")
            arr = z[key]
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"npz file not found: {path}") from None
    except Exception as e:  # zip/format errors
        raise DataError(f"cannot read npz file {path}: {e}") from None
    arr.flags.writeable = False
    return arr


def _h5_array(path: str, key: str | None, index: int | None) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if key is None:
                names = [k for k in f if isinstance(f[k], h5py.Dataset)]
                if len(names) != 1:
                    raise DataError(f"HDF5 file {path}: say which array to read with key= (has {names})")
                key = names[0]
            if key not in f:
                raise DataError(f"HDF5 file {path} has no array {key!r}")
            ds = f[key]
            arr = np.asarray(ds[index] if index is not None else ds[()])
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"HDF5 file not found: {path}") from None
    except Exception as e:  # h5py raises OSError/KeyError/ValueError variants
        raise DataError(f"cannot read HDF5 file {path}: {e}") from None
    if path.lower().endswith(".mat"):
        # MATLAB v7.3 stores column-major: h5py sees reversed axes; .T restores MATLAB's order.
        arr = arr.T
        if arr.ndim == 3 and index is None and arr.shape[2] not in (3, 4):
            arr = np.moveaxis(arr, 2, 0)  # MATLAB HxWxD -> (D, H, W)
    return arr


def _array_image(arr: np.ndarray, opts: ReadOptions, *, mask: bool, what: str) -> np.ndarray:
    if mask:
        return _mask_2d(arr, what) if arr.ndim == 3 and arr.shape[-1] in (3, 4) else arr.astype(np.int64)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return scale(arr, opts, auto="dtype")


# ---------------------------------------------------------------------------- dispatch


def _stamp(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)


def _read_volume(path: str, kind: str, axis: int, opts: ReadOptions, mask: bool) -> np.ndarray:
    if kind == "nifti":
        return read_nifti(path, opts, axis, mask=mask)
    if kind == "image-stack":
        return read_image_stack(path, opts, mask=mask)
    return read_dicom_series(path, opts, mask=mask)


@functools.lru_cache(maxsize=3)
def _volume_cached(
    path: str, kind: str, axis: int, opts: ReadOptions, mask: bool, stamp: tuple[int, int]
) -> np.ndarray:
    # Volumes read for their slices are cached, so slice after slice loads (and normalises) a file once.
    vol = _read_volume(path, kind, axis, opts, mask)
    vol.flags.writeable = False
    return vol


def _read(ref: ImageRef, opts: ReadOptions, *, mask: bool) -> np.ndarray:
    kind, path = ref.kind, ref.path
    if kind in MASK_SET_KINDS:
        if not mask:
            raise DataError(f"{path}: a {kind} reference is a mask, not an image")
        return read_mask_set(ref)
    if kind in VOLUME_KINDS:
        if kind == "nifti" and not os.path.exists(path):
            raise DataError(f"NIfTI file not found: {path}")
        if ref.index is None:  # whole volumes are read once per use: no cache, no copy
            vol = _read_volume(path, kind, ref.axis, opts, mask)
            return vol.astype(np.int64) if mask else vol
        vol = _volume_cached(path, kind, ref.axis, opts, mask, _stamp(path))
        if not 0 <= ref.index < vol.shape[0]:
            raise DataError(
                f"{path}: slice {ref.index} out of range ({vol.shape[0]} slices along axis {ref.axis})"
            )
        return vol[ref.index].astype(np.int64) if mask else vol[ref.index].copy()
    if kind == "image":
        arr = _pil_array(path, mask=mask)
        if mask:
            return _mask_2d(arr, path)
        return scale(arr, opts, auto="dtype")
    if kind == "dicom":
        arr = read_dicom(path, opts, mask=mask)
        if ref.index is not None:
            if arr.ndim != 3 or not 0 <= ref.index < arr.shape[0]:
                raise DataError(f"{path}: frame {ref.index} out of range (shape {arr.shape})")
            arr = arr[ref.index]
        return arr
    if kind == "npz":
        if ref.key is None:
            raise DataError(f"{path}: npz image reference needs an array key")
        arr = _npz_array(path, ref.key, _stamp(path))
        if ref.index is not None:
            if not 0 <= ref.index < arr.shape[0]:
                raise DataError(
                    f"{path}: index {ref.index} out of range for {ref.key} ({arr.shape[0]} items)"
                )
            arr = arr[ref.index]
        return _array_image(np.array(arr), opts, mask=mask, what=f"{path}:{ref.key}")
    if kind == "h5":
        arr = _h5_array(path, ref.key, ref.index)
        return _array_image(arr, opts, mask=mask, what=f"{path}:{ref.key}")
    raise DataError(f"{path}: unsupported image kind {kind!r}")


def read_image(ref: ImageRef, opts: ReadOptions | None = None) -> np.ndarray:
    """Read an image/volume as float32 in [0, 1]: (H, W), (H, W, 3) or (D, H, W)."""
    opts = opts or ReadOptions()
    out = _read(ref, opts, mask=False)
    if not np.all(np.isfinite(out)):
        out = np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0)
    is_2d = out.ndim == 2 or (out.ndim == 3 and out.shape[-1] == 3 and ref.kind not in VOLUME_KINDS)
    if opts.pad is not None and is_2d:  # volumes are never padded (MedMNIST+ pads 2D sets only)
        out = pad_image(out, opts.pad, ref.path)
    return out


def pad_image(img: np.ndarray, size: int, what: str) -> np.ndarray:
    """Centre a 2D image (H, W) or (H, W, 3) on a ``size x size`` zero canvas (no resizing)."""
    h, w = img.shape[:2]
    if h > size or w > size:
        raise DataError(f"{what}: image of {h}x{w} is larger than pad={size}; padding never shrinks")
    top, left = (size - h) // 2, (size - w) // 2
    out = np.zeros((size, size, *img.shape[2:]), dtype=img.dtype)
    out[top : top + h, left : left + w] = img
    return out


def read_mask(ref: ImageRef, opts: ReadOptions | None = None) -> np.ndarray:
    """Read a mask as an int64 label map with raw stored values, oriented like its image read with
    ``opts`` (only ``opts.orient`` matters: intensity options never touch masks)."""
    # Dropping the intensity options keeps one cache entry per mask volume whatever the window.
    orient = opts.orient if opts is not None else "canonical"
    return _read(ref, ReadOptions(orient=orient), mask=True)
