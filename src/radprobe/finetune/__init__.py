"""Trained protocols: full fine-tuning and parameter-efficient fine-tuning of a backbone.

``radprobe eval --protocol finetune,lora,dora,bitfit,vpt,partial`` is run by :mod:`radprobe.run.trained`
with the parts kept here.
Unlike the frozen-feature protocols these train the backbone (or adapters, biases, prompts, last
blocks) end to end on images, so gradients really reach the backbone side — the failure of the seed
study's LoRA path, whose features were computed under ``no_grad``. Classification (binary,
multi-class, multi-label) trains a linear head; 2D segmentation trains the seg-linear or seg-decoder
head of :mod:`radprobe.segmentation` on the live patch grids and writes the ``seg-*`` protocols' rows.
Every row reports what the method costs: total and trainable parameters, training throughput, peak
memory and wall time.

Modules: :mod:`~radprobe.finetune.options` (per-protocol options), :mod:`~radprobe.finetune.methods`
(what trains), :mod:`~radprobe.finetune.vpt` (prompted ViT), :mod:`~radprobe.finetune.heads`,
:mod:`~radprobe.finetune.data` (augmentation), :mod:`~radprobe.finetune.train` (the loop),
:mod:`~radprobe.finetune.checkpoint` (resumable checkpoints),
:mod:`~radprobe.finetune.distributed` (data-parallel ranks).
"""

from __future__ import annotations

from radprobe.finetune.methods import Built, TrainModel, build_model, check_method
from radprobe.finetune.options import OPTION_TYPES, describe_options, parse_options

__all__ = [
    "OPTION_TYPES",
    "Built",
    "TrainModel",
    "build_model",
    "check_method",
    "describe_options",
    "parse_options",
]
