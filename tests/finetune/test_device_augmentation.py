"""Training rows augmented as batches on the device equal the per-item CPU path: the same draws and,
on the CPU with one torch thread (conftest), the same numbers bit for bit, masks included, and the
same training run. (On CUDA the kernels round differently: the same numbers to float rounding.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ft_helpers import BACKBONE, fast_options
from PIL import Image
from torch.utils.data import default_collate

from radprobe.backbones import create_backbone
from radprobe.data import load_dataset
from radprobe.features.image_source import decoded_split
from radprobe.features.images import ImageCache
from radprobe.finetune import build_model, parse_options
from radprobe.finetune.checkpoint import Checkpointer
from radprobe.finetune.data import Augment, ImageSet, ResizedCrop
from radprobe.finetune.heads import ClassificationHead
from radprobe.finetune.predict import Split
from radprobe.finetune.train import fit

CPU = torch.device("cpu")
AUGMENTS = [Augment(), Augment(hflip=True, rotate=30.0, crop_scale=0.5, intensity=0.3)]


def _folder(tmp: Path, n: int, size: int, rgb: bool) -> Path:
    """``n`` random PNGs in two classes: 32 px stays uint8 in the entry, other sizes resize to float32."""
    rng = np.random.default_rng(0)
    for i in range(n):
        d = tmp / "data" / "train" / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        shape = (size, size, 3) if rgb else (size, size)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(d / f"p{i}.png")
    return tmp / "data"


def _cached_set(tmp: Path, size: int, rgb: bool, augment: Augment | None, n: int = 6) -> ImageSet:
    ds = load_dataset(f"folder:{_folder(tmp, n, size, rgb)}")
    pre = create_backbone(BACKBONE, pretrained=False, resolution=32).preprocess
    entry = decoded_split(ImageCache(tmp / "images"), ds, "train", pre)
    assert entry is not None
    return ImageSet(ds, ds.split("train"), pre, augment, seed=3, decoded=entry)


def _both(images: ImageSet, indices: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The per-item batch and the batched device one (on the CPU) of the same loader indices."""
    images.stream, images.batched = True, False  # stream indices: pass * len + row, several draws
    per_item = default_collate([images[i] for i in indices])
    images.batched = True
    stored = default_collate([images[i] for i in indices])
    images.batched = False
    return per_item, images.device_batch(stored, CPU)


@pytest.mark.parametrize(("size", "rgb", "storage"), [(32, False, "uint8"), (40, True, "float32")])
@pytest.mark.parametrize("augment", AUGMENTS)
def test_device_batch_equals_per_item_augmentation(tmp_path, size, rgb, storage, augment) -> None:
    images = _cached_set(tmp_path, size, rgb, augment)
    assert images.storage == storage and images.batchable
    indices = [0, 5, 7, 13, 2, 17, 6]  # rows 0-5 in draws 0, 1 and 2
    per_item, batched = _both(images, indices)
    assert batched[0].shape == per_item[0].shape == (len(indices), 3, 32, 32)
    assert batched[0].dtype == torch.float32 and torch.equal(batched[1], per_item[1])
    assert torch.equal(batched[0], per_item[0])  # on the CPU: the same numbers bit for bit
    # distinct draws of one row differ: the draw index reached the batched path
    assert not torch.allclose(batched[0][0], batched[0][5])


@pytest.mark.parametrize("channels", [1, 3])
def test_device_batch_moves_masks_exactly_as_per_item(tmp_path, channels) -> None:
    ds = load_dataset(f"folder:{_folder(tmp_path, 4, 32, False)}")
    pre = create_backbone(BACKBONE, pretrained=False, resolution=32).preprocess
    rng = np.random.default_rng(1)
    pixels = rng.random((4, channels, 32, 32), dtype=np.float32)
    masks = rng.integers(0, 3, (4, 32, 32)).astype(np.int64)
    images = ImageSet(ds, ds.split("train"), pre, AUGMENTS[1], seed=5, masks=masks, pixels=pixels)
    assert images.batchable and images.storage == "float32"
    per_item, batched = _both(images, [0, 1, 2, 3, 4, 6, 11])
    assert torch.equal(batched[0], per_item[0])  # on the CPU: the same numbers bit for bit
    assert torch.equal(batched[2], per_item[2]) and batched[2].dtype == torch.int64
    assert not torch.equal(batched[2][0], torch.from_numpy(masks[0]))  # the masks did move


def test_only_stored_rows_with_the_affine_augmentation_are_batchable(tmp_path) -> None:
    images = _cached_set(tmp_path, 32, False, Augment())
    crop = ImageSet(images.dataset, images.records, images.preprocess, ResizedCrop(), decoded=images.decoded)
    plain = ImageSet(images.dataset, images.records, images.preprocess, Augment())
    none = ImageSet(images.dataset, images.records, images.preprocess, None, decoded=images.decoded)
    assert images.batchable and not crop.batchable and not plain.batchable and not none.batchable
    assert none.augment_path == "none" and images.augment_path == "cpu"


def _train(tmp: Path, images: ImageSet, labels: np.ndarray, where: str, workers: int):
    bb = create_backbone(BACKBONE, pretrained=False, resolution=32)
    torch.manual_seed(0)
    head = ClassificationHead(bb.info.embed_dim, 2, "binary", "cls")
    raw = fast_options("finetune", epochs=2, batch_size=8, augment=True, augment_on=where, hflip=True)
    opts = parse_options("finetune", raw, 8)
    built = build_model("finetune", bb, head, opts)
    state = fit(
        built,
        Split(images, labels),
        None,
        "binary",
        opts,
        seed=0,
        device=CPU,
        checkpoints=Checkpointer(tmp / f"{where}{workers}", "k"),
        num_workers=workers,
        progress=False,
    )
    path = images.augment_path
    weights = {k: v.detach().clone() for k, v in built.model.state_dict().items()}
    return [h["train_loss"] for h in state.history], weights, path


def test_training_on_device_batches_equals_per_item_training(tmp_path) -> None:
    images = _cached_set(tmp_path, 32, False, AUGMENTS[1], n=24)
    labels = images.dataset.labels(images.records)
    runs = {
        (where, workers): _train(tmp_path, images, labels, where, workers)
        for where, workers in [("device", 0), ("device", 1), ("cpu", 0), ("cpu", 1)]
    }
    assert [runs[k][2] for k in runs] == ["device", "device", "cpu", "cpu"]
    for where in ("device", "cpu"):  # deterministic whatever the number of workers
        (l0, w0, _), (l1, w1, _) = runs[where, 0], runs[where, 1]
        assert l0 == l1 and all(torch.equal(w0[k], w1[k]) for k in w0)
    (ld, wd, _), (lc, wc, _) = runs["device", 0], runs["cpu", 0]
    assert ld == lc and all(torch.equal(wd[k], wc[k]) for k in wd)  # one torch thread: bit for bit


def test_rows_record_the_augmentation_path_and_cpu_alone_enters_the_key(tmp_path) -> None:
    from ft_helpers import make_cfg

    from radprobe.run.evaluate import evaluate

    rows = {}
    for where in ("device", "cpu"):
        opts = {"bitfit": fast_options("bitfit", epochs=1, augment=True, augment_on=where)}
        cfg = make_cfg(tmp_path / where, ["bitfit"], opts, n_boot=0, cache_root=tmp_path / "cache")
        rows[where] = evaluate(cfg).rows[0]
    assert rows["device"]["env"]["augment_path"] == "device"  # training read the decoded-image entry
    assert rows["cpu"]["env"]["augment_path"] == "cpu"
    assert "augment_on" not in rows["device"]["hparams"] and rows["cpu"]["hparams"]["augment_on"] == "cpu"
    assert rows["device"]["value"] == rows["cpu"]["value"]


def test_2d_segmentation_training_reads_the_decoded_entry_and_augments_on_the_device(tmp_path) -> None:
    # images and their masks move together through the batched affine; the numbers are the per-item ones
    from ft_helpers import SEG_DATASET, make_cfg, seg_options

    from radprobe.run.evaluate import evaluate

    rows = {}
    for where in ("device", "cpu"):
        opts = {"bitfit": seg_options("bitfit", epochs=1, augment=True, augment_on=where)}
        cfg = make_cfg(
            tmp_path / where, ["bitfit"], opts, dataset=SEG_DATASET, n_boot=0, cache_root=tmp_path / "cache"
        )
        rows[where] = next(r for r in evaluate(cfg).rows if r["metric"] == "dice_macro")
    assert rows["device"]["env"]["augment_path"] == "device"
    assert rows["cpu"]["env"]["augment_path"] == "cpu"
    assert rows["device"]["value"] == pytest.approx(rows["cpu"]["value"], abs=1e-9)


def test_a_refits_train_plus_val_reads_both_entries_as_one(tmp_path) -> None:
    # the refit's train + val rows: the two splits' decoded entries joined in order, augmented as device
    # batches; each row equals the one its own split's set gives
    from radprobe.finetune.data import JoinedEntry

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        for i in range(n):
            d = tmp_path / "data" / split / f"c{i % 2}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(d / f"{split}{i}.png")
    ds = load_dataset(f"folder:{tmp_path / 'data'}")
    pre = create_backbone(BACKBONE, pretrained=False, resolution=32).preprocess
    cache = ImageCache(tmp_path / "images")
    train, val = (decoded_split(cache, ds, s, pre) for s in ("train", "val"))
    joined = JoinedEntry.of([train, val])
    n_train, n_val = len(ds.split("train")), len(ds.split("val"))
    assert joined is not None and len(joined) == n_train + n_val and n_val >= 2
    recs = ds.split("train") + ds.split("val")
    both = ImageSet(ds, recs, pre, AUGMENTS[1], seed=3, decoded=joined)
    assert both.batchable and both.storage == "uint8"
    alone = ImageSet(ds, ds.split("val"), pre, None, seed=3, decoded=val)
    plain = ImageSet(ds, recs, pre, None, seed=3, decoded=joined)
    assert torch.equal(plain[n_train + 1][0], alone[1][0])  # row 1 of val, after the train rows
    per_item, batched = _both(both, [0, n_train + 1, n_train - 1, len(recs) + 2, 2 * len(recs) + n_train])
    assert torch.equal(batched[0], per_item[0])
    assert JoinedEntry.of([train, None]) is None
