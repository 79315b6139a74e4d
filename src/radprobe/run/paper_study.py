"""The seed paper's study matrix (Baharoon et al., arXiv 2312.02366) as a built-in study, run with
the paper's own protocols: the ``paper:`` backbone entries (each baseline's features as the released
code takes them) and every protocol's ``preset=paper`` (docs/paper-fidelity*.md).

Datasets are addressed under ``data_root`` (``--set data_root=/data`` or ``RADPROBE_DATA``), each in
its published layout (see ``radprobe datasets``). Classification runs at 224 px and segmentation at
448 px, as in the paper. Options that depend on the dataset sit on the dataset: ML-kNN on the
multi-label chest X-ray sets, and the few-shot draw rule (NIH's patients per label; evenly spaced
images elsewhere). Segmentation runs the paper's linear head and UNet decoder (``preset=paper``;
the decoder on the ViTs only) beside the U-Net and TransUNet trained from scratch, and Montgomery's
few-shot curve (1-16 training images) for DINOv2 ViT-L/14 and both baselines.
"""

from __future__ import annotations

from typing import Any

CLASSIFICATION = ["knn", "linear", "fewshot", "finetune", "lora"]
# The paper's heads (linear, and its UNet decoder on ViT patch grids) and its from-scratch baselines
SEGMENTATION = ["seg-linear", "seg-unet", "seg-transunet"]

BACKBONES = [
    "paper:dinov2-s", "paper:dinov2-b", "paper:dinov2-l", "paper:dinov2-g",
    "paper:vit-l-in21k", "paper:resnet152", "paper:densenet201", "paper:vgg19",
    "paper:mae-l", "paper:msn-l", "paper:clip-l", "paper:openclip-h", "paper:biomedclip", "paper:sam-l",
]  # fmt: skip

# The UNet decoder reads five blocks' patch grids: the ViTs only (the CNNs give one map).
VITS = [b for b in BACKBONES if b not in ("paper:resnet152", "paper:densenet201", "paper:vgg19")]
# The Montgomery few-shot curve: DINOv2 ViT-L/14 beside the U-Net and TransUNet, trained on n images.
# The figure does not name DINOv2's head; the lightest of the paper's two (linear) is taken.
FEWSHOT_SEG = {"shots": [1, 2, 4, 8, 16]}

# Per dataset: ML-kNN where the labels are multi-label, and which few-shot rule the paper drew with.
MULTILABEL = {"knn": {"preset": "paper"}}
NIH_FEWSHOT = {"fewshot": {"rule": "nih"}}
EVENLY = {"fewshot": {"rule": "evenly_spaced"}}

DATASETS: list[tuple[str, list[str], int, dict[str, dict[str, Any]]]] = [
    # paper=1: the paper's label sets and split sizes (e.g. NIH's 15 outputs, CheXpert frontal U-zeros)
    ("nih-cxr14:{data_root}/nih-cxr14?paper=1", CLASSIFICATION, 224, {**MULTILABEL, **NIH_FEWSHOT}),
    ("chexpert:{data_root}/chexpert?paper=1", CLASSIFICATION, 224, {**MULTILABEL, **EVENLY}),
    ("sars-cov-2-ct:{data_root}/sars-cov-2-ct?paper=1", CLASSIFICATION, 224, EVENLY),
    ("brain-tumor-mri:{data_root}/brain-tumor-mri?paper=1", CLASSIFICATION, 224, EVENLY),
    ("montgomery:{data_root}/montgomery?paper=1", SEGMENTATION, 448, {}),
    ("shenzhen:{data_root}/shenzhen?paper=1", SEGMENTATION, 448, {}),
    ("btcv:{data_root}/btcv?paper=1", SEGMENTATION, 448, {}),
    ("amos:{data_root}/amos?paper=1", SEGMENTATION, 448, {}),
    ("msd:{data_root}/msd?task=2&paper=1", SEGMENTATION, 448, {}),
]


def _segmentation_extras() -> list[dict[str, Any]]:
    """The UNet decoder on every segmentation set (ViTs only) and Montgomery's few-shot curve."""
    seg = [s for s, p, _, _ in DATASETS if p is SEGMENTATION]
    decoder = [{"spec": s, "protocols": ["seg-updecoder"], "backbones": VITS, "resolution": 448} for s in seg]
    curve = {
        "spec": seg[0],
        "protocols": SEGMENTATION,
        "backbones": ["paper:dinov2-l"],
        "resolution": 448,
        "options": {p: FEWSHOT_SEG for p in SEGMENTATION},
    }
    return [*decoder, curve]


def paper_2312_02366() -> dict[str, Any]:
    """Backbones x datasets x protocols of the paper, as a raw study dict."""
    return {
        "name": "paper-2312.02366",
        "backbones": BACKBONES,
        "datasets": [
            *(
                {"spec": s, "protocols": p, "resolution": r, **({"options": o} if o else {})}
                for s, p, r, o in DATASETS
            ),
            *_segmentation_extras(),
        ],
        "protocols": {
            "knn": {},
            "linear": {"preset": "paper"},
            "fewshot": {"preset": "paper", "shots": [1, 2, 4, 8, 16]},
            "finetune": {"preset": "paper"},
            "lora": {"preset": "paper"},
            "seg-linear": {"preset": "paper"},
            "seg-updecoder": {"preset": "paper"},
            "seg-unet": {},
            "seg-transunet": {},
        },
        "seeds": [0],
        "bootstrap": 1000,
    }
