"""The seed paper's study matrix (Baharoon et al., arXiv 2312.02366) as a built-in study.

Datasets are addressed under ``data_root`` (``--set data_root=/data`` or ``RADPROBE_DATA``), each in
its published layout (see ``radprobe datasets``). Classification runs at 224 px and segmentation at
448 px, as in the paper; few-shot counts patients per class (1-16) with repeated draws.
"""

from __future__ import annotations

from typing import Any

CLASSIFICATION = ["knn", "linear", "fewshot", "finetune", "lora", "bitfit"]
SEGMENTATION = ["seg-linear", "seg-decoder", "seg-unet"]

BACKBONES = [
    "dinov2-s", "dinov2-b", "dinov2-l", "dinov2-g",
    "vit-l-in21k", "resnet152", "densenet201", "vgg19",
    "mae-l", "msn-l", "clip-l", "openclip-h", "biomedclip", "sam-l",
]  # fmt: skip

DATASETS = [
    # paper=1: the paper's label sets and split sizes (e.g. NIH's 15 outputs, CheXpert frontal U-zeros)
    ("nih-cxr14:{data_root}/nih-cxr14?paper=1", CLASSIFICATION, 224),
    ("chexpert:{data_root}/chexpert?paper=1", CLASSIFICATION, 224),
    ("sars-cov-2-ct:{data_root}/sars-cov-2-ct?paper=1", CLASSIFICATION, 224),
    ("brain-tumor-mri:{data_root}/brain-tumor-mri?paper=1", CLASSIFICATION, 224),
    ("montgomery:{data_root}/montgomery?paper=1", SEGMENTATION, 448),
    ("shenzhen:{data_root}/shenzhen?paper=1", SEGMENTATION, 448),
    ("btcv:{data_root}/btcv?paper=1", SEGMENTATION, 448),
    ("amos:{data_root}/amos?paper=1", SEGMENTATION, 448),
    ("msd:{data_root}/msd?task=2&paper=1", SEGMENTATION, 448),
]


def paper_2312_02366() -> dict[str, Any]:
    """Backbones x datasets x protocols of the paper, as a raw study dict."""
    return {
        "name": "paper-2312.02366",
        "backbones": BACKBONES,
        "datasets": [{"spec": s, "protocols": p, "resolution": r} for s, p, r in DATASETS],
        "protocols": {
            "knn": {},
            "linear": {},
            "fewshot": {"shots": [1, 2, 4, 8, 16], "repeats": 5, "protocols": ["linear"]},
            "finetune": {},
            "lora": {"preset": "paper"},
            "bitfit": {},
            "seg-linear": {},
            "seg-decoder": {},
            "seg-unet": {},
        },
        "seeds": [0],
        "bootstrap": 1000,
    }
