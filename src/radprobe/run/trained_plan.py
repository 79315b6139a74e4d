"""The trained family's plan: everything a trained evaluation needs, checked before anything trains.

Protocols, options, device, dataset (segmentation: every mask), backbone and each method's fit to
the backbone are validated here, and nothing is written to the run directory.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from radprobe.core.runtime import resolve_device
from radprobe.errors import OptionError, RadprobeError
from radprobe.finetune.heads import make_head
from radprobe.finetune.methods import check_method, unreached_parameters
from radprobe.finetune.options import TrainOptions, check_task_options, parse_options
from radprobe.protocols import registry
from radprobe.run.config import EvalConfig, check_n_boot, check_protocol_list

if TYPE_CHECKING:
    from radprobe.backbones.base import Backbone
    from radprobe.data import Dataset
    from radprobe.segmentation.data import SegSplit

CLASSIFICATION_TASKS = registry.CLASSIFICATION
SPLITS = ("train", "val", "test")


@dataclass
class Plan:
    """A validated trained evaluation: dataset, a first backbone, and each protocol's options."""

    cfg: EvalConfig
    dataset: Dataset
    backbone: Backbone | None  # handed to the first protocol; later ones build their own
    device: torch.device
    options: dict[str, TrainOptions]
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    resolution: int | None = None  # None: the backbone's own
    seg: dict[str, SegSplit] = field(default_factory=dict)  # segmentation: each split's cases and masks
    seg_hparams: dict[str, Any] = field(default_factory=dict)  # what seg rows record about the inputs

    @property
    def segmentation(self) -> bool:
        return bool(self.seg)

    def take_backbone(self) -> Backbone:
        """The validated backbone once, then fresh (identical) builds: each protocol changes its own."""
        if self.backbone is not None:
            bb, self.backbone = self.backbone, None
            return bb
        return _create_backbone(self.cfg, self.resolution)


def _create_backbone(cfg: EvalConfig, resolution: int | None) -> Backbone:
    from radprobe.backbones import create_backbone

    return create_backbone(
        cfg.backbone,
        weights=cfg.weights,
        allow_partial_weights=cfg.allow_partial_weights,
        pretrained=cfg.pretrained,
        resolution=resolution,
    )


def validate(cfg: EvalConfig, dataset: Dataset | None = None) -> Plan:
    """Check everything a trained evaluation needs; raises :class:`RadprobeError`, writes nothing.
    ``dataset``: the loaded ``cfg.dataset``, if at hand."""
    from radprobe.data import load_dataset

    trained = registry.names("trained")
    for p in cfg.protocols:
        if p not in trained:
            raise OptionError(
                "--protocol",
                f"{p}: unknown trained protocol; expected one of {', '.join(trained)}",
                setting="protocols",
            )
    check_protocol_list(cfg.protocols, cfg.options)
    check_n_boot(cfg.n_boot)
    options = {p: parse_options(p, cfg.options.get(p, {}), cfg.batch_size) for p in cfg.protocols}
    device = torch.device(resolve_device(cfg.device))
    dataset = dataset if dataset is not None else load_dataset(cfg.dataset)
    segmentation = dataset.task == "segmentation"
    if not segmentation and dataset.task not in CLASSIFICATION_TASKS:
        raise RadprobeError(
            f"dataset {cfg.dataset} is a {dataset.task} dataset; trained protocols support classification "
            f"({', '.join(CLASSIFICATION_TASKS)}) and segmentation"
        )
    if not segmentation and dataset.ndim != 2:
        raise RadprobeError(
            f"dataset {cfg.dataset} is {dataset.ndim}D; trained protocols classify 2D images "
            "(3D datasets: segmentation only, slice by slice)"
        )
    check_task_options(cfg.options, cfg.dataset, dataset.task)
    for s in SPLITS:
        if not dataset.split(s):
            raise RadprobeError(f"dataset {cfg.dataset} has no {s!r} split")
    resolution, resolution_source = cfg.resolution, ""
    if segmentation:
        from radprobe.run.segment import seg_resolution

        if importlib.util.find_spec("monai") is None:
            raise OptionError(
                "--protocol",
                f"{cfg.protocols[0]}: segmentation needs MONAI (losses, HD95); pip install 'monai>=1.3'",
                setting="protocols",
            )
        # the frozen seg protocols' resolution, so trained and frozen rows see the same pixels
        resolution, resolution_source = seg_resolution(cfg.backbone, cfg.resolution)
    backbone = _create_backbone(cfg, resolution)
    seg: dict[str, SegSplit] = {}
    seg_hparams: dict[str, Any] = {}
    if segmentation:
        from radprobe.run.segment import common_hparams
        from radprobe.segmentation.data import load_split, uniform_spacing

        # every mask is checked now, so a bad one fails before anything is trained or written
        pre = backbone.preprocess
        volumes = dataset.ndim == 3
        seg = {
            # a volume's slices are kept resized (as the backbone resizes them), so training reads
            # slices from memory instead of decoding the whole volume for each slice
            s: load_split(
                dataset,
                s,
                pre.resolution,
                keep_masks=s != "train",
                keep_images=volumes,
                interpolation=pre.interpolation,
                # a paper: entry resizes as torchvision 0.15 resized the released float tensors
                released_resize=not pre.antialias and not pre.clamp,
            )
            for s in SPLITS
        }
        uniform_spacing(seg.values())
        seg_hparams = common_hparams(dataset, seg["test"], pre.resolution, resolution_source)
        # recorded apart from the ``intensity`` jitter option, which shares the frozen rows' key name
        seg_hparams["input_intensity"] = seg_hparams.pop("intensity")
    details = {}
    with torch.random.fork_rng(devices=[]):  # heads drawn here must not shift the caller's RNG
        for p in cfg.protocols:
            details[p] = check_method(p, backbone, options[p])
            # one forward/backward on a copy: the method's own parameters must receive gradients
            unused, error = unreached_parameters(
                p, backbone, make_head(dataset, backbone, options[p]), options[p]
            )
            if error:
                raise RadprobeError(error)
            details[p]["unused"] = unused
    return Plan(cfg, dataset, backbone, device, options, details, resolution, seg, seg_hparams)
