"""A checkpoint stored at the working grid loads as is and runs without resampling its positions."""

from __future__ import annotations

import timm
import torch
from safetensors.torch import save_file

from radprobe.backbones import create_backbone


def test_vit_built_at_working_resolution_matches_timm_exactly(tmp_path):
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=112).eval()
    path = tmp_path / "w112.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    b = create_backbone("timm:vit_tiny_patch16_224", weights=path, resolution=112)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        got = b(x).cls
        want = ref.forward_features(x)[:, 0]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
