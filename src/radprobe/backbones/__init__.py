"""Vision backbones with their own preprocessing and uniform frozen-feature outputs.

>>> bb = create_backbone("dinov2-s")            # timm hub weights (or --weights PATH)
>>> out = bb(bb.preprocess(image)[None], n_blocks=4, grid_layers=(-1,))

Names: see :func:`list_backbones`; also ``timm:<model>``, ``hf:<repo or folder>``, the
download-free ``test:vit-tiny``, ``test:vit-tiny-reg``, ``test:cnn-tiny``, and ``paper:<name>``: the
backbones as Baharoon et al. (arXiv 2312.02366) took their features (see :mod:`.paper`).
"""

from __future__ import annotations

# Importing the family modules registers their backbones.
from radprobe.backbones import hf, openclip, paper, testing, timm_zoo  # noqa: F401
from radprobe.backbones.base import Backbone, BackboneInfo, BackboneOutput, Preprocess
from radprobe.backbones.registry import (
    BackboneEntry,
    BuildOptions,
    backbone_stats,
    create_backbone,
    get_backbone_entry,
    list_backbones,
    register,
    registered_names,
)

__all__ = [
    "Backbone",
    "BackboneEntry",
    "BackboneInfo",
    "BackboneOutput",
    "BuildOptions",
    "Preprocess",
    "backbone_stats",
    "create_backbone",
    "get_backbone_entry",
    "list_backbones",
    "register",
    "registered_names",
]
