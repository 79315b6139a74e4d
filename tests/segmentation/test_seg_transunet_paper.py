"""TransUNet ``layout="paper"``: the released R50-ViT-L_16 (dinov2/models/transunet.py,
``CONFIGS["R50-ViT-L_16"]`` with ``n_skip = 3``) against a parameter count from its config, its 448 px
logits, weight standardisation by formula, the released structure, a short overfit of a shrunk copy,
and which layout a run records."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from seg_helpers import shapes
from torch import nn

from radprobe.metrics.segmentation import split_dice
from radprobe.protocols import registry
from radprobe.segmentation.train import TrainSettings, image_fetch, train
from radprobe.segmentation.transunet import TransUNet, std_conv

SMALL = {"widths": [32, 128, 128, 128], "vit_dim": 32, "vit_depth": 1, "vit_heads": 2,
         "decoder_channels": [16, 16, 8, 8]}  # fmt: skip


def _bottleneck(cin: int, cout: int) -> int:
    """A released PreActBottleneck: bias-free 1x1, 3x3, 1x1 at cout / 4, GroupNorm (weight, bias)
    after each, and a 1x1 projection with its GroupNorm when the shape changes."""
    mid = cout // 4
    n = cin * mid + 9 * mid * mid + mid * cout + 2 * (mid + mid + cout)
    return n + (cin * cout + 2 * cout if cin != cout else 0)


def _released_params(classes: int) -> int:
    """R50-ViT-L_16 at 448 px counted from its config: resnet (3, 4, 9) at width 64, hidden 1024,
    mlp 4096, 24 layers, 28 x 28 patches, decoder (256, 128, 64, 16), skips [512, 256, 64, 0], head 512."""
    n = 49 * 3 * 64 + 2 * 64  # root StdConv 7x7 + GroupNorm
    for cin, cout, units in ((64, 256, 3), (256, 512, 4), (512, 1024, 9)):
        n += _bottleneck(cin, cout) + (units - 1) * _bottleneck(cout, cout)
    d, mlp = 1024, 4096
    n += d * d + d + 28 * 28 * d  # 1x1 patch embedding, position embeddings
    n += 24 * (4 * (d * d + d) + (d * mlp + mlp) + (mlp * d + d) + 2 * 2 * d) + 2 * d
    n += 9 * d * 512 + 2 * 512  # conv_more + BatchNorm
    for cin, skip, cout in ((512, 512, 256), (256, 256, 128), (128, 64, 64), (64, 0, 16)):
        n += 9 * (cin + skip) * cout + 2 * cout + 9 * cout * cout + 2 * cout
    return n + 9 * 16 * classes + classes


def test_full_size_has_the_released_parameter_count_and_448_logits():
    with torch.device("meta"):  # no memory, no arithmetic: shapes and counts only
        model = TransUNet(3, 3, 448, **_paper_size(), layout="paper")
        out = model(torch.empty(2, 3, 448, 448))
    count = sum(p.numel() for p in model.parameters())
    # 324_625_971: the released VisionTransformer(CONFIGS["R50-ViT-L_16"], n_skip 3, 3 classes, 448)
    assert count == _released_params(3) == 324_625_971
    assert out.shape == (2, 3, 448, 448) and model.pos.shape == (1, 784, 1024)


def _paper_size() -> dict:
    """The size ``preset=paper`` resolves to."""
    o = registry.check_options("seg-transunet", {"preset": "paper"})
    return {k: o[k] for k in ("widths", "vit_dim", "vit_depth", "vit_heads", "decoder_channels")}


def test_std_conv_standardises_each_output_channel_with_eps_1e5():
    torch.manual_seed(0)
    conv = std_conv(4, 6, 3, 2)
    with torch.no_grad():
        conv.weight.mul_(torch.logspace(-4, 0, 6).view(6, 1, 1, 1))  # tiny variances: eps shows
    x = torch.randn(2, 4, 9, 9)
    w = conv.weight.detach()
    mean = w.mean(dim=(1, 2, 3), keepdim=True)
    var = ((w - mean) ** 2).mean(dim=(1, 2, 3), keepdim=True)  # biased, per output channel
    want = F.conv2d(x, (w - mean) / torch.sqrt(var + 1e-5), None, 2, 1)
    torch.testing.assert_close(conv(x), want, rtol=1e-4, atol=1e-5)
    other = F.conv2d(x, (w - mean) / torch.sqrt(var + 1e-6), None, 2, 1)
    assert (conv(x) - other).abs().max() > 1e-2


def test_released_structure_skips_dropout_and_init():
    torch.manual_seed(0)
    model = TransUNet(3, 2, 64, **SMALL, layout="paper")
    units = [len(s) for s in model.cnn.stages]
    assert units == [3, 4, 9]
    strides = [s[0].conv2.stride for s in model.cnn.stages]
    assert strides == [(1, 1), (2, 2), (2, 2)]  # the stride on the 3x3, as released
    root = model.cnn.root
    assert (root[0].kernel_size, root[0].stride, root[0].padding) == ((7, 7), (2, 2), (3, 3))
    assert model.cnn.pool.padding == 0 and root[1].num_groups == 32 and root[1].eps == 1e-6
    proj_gn = model.cnn.stages[0][0].short[1]
    assert proj_gn.num_groups == proj_gn.num_channels == 128 and proj_gn.eps == 1e-5
    drops = sorted(m.p for m in model.modules() if isinstance(m, nn.Dropout))
    assert drops == [0.1] * 3  # embeddings, the MLP's two; none in attention
    assert all(m.eps == 1e-6 for m in model.modules() if isinstance(m, nn.LayerNorm))
    assert not model.pos.detach().any()  # released: zeros, nothing pretrained
    fc1 = model.blocks[0].mlp.fc1.requires_grad_(False)
    assert float(fc1.bias.abs().max()) < 1e-4 and float(fc1.weight.abs().max()) <= (6 / (32 + 128)) ** 0.5
    assert isinstance(model.blocks[0].mlp.act, nn.GELU) and model.blocks[0].mlp.act.approximate == "none"
    seen: list[tuple[int, ...]] = []
    for m in model.decoder[:3]:
        m.register_forward_pre_hook(lambda _m, a: seen.append(tuple(a[1].shape)))
    quarter: list[torch.Tensor] = []
    model.cnn.stages[0].register_forward_hook(lambda _m, _i, out: quarter.append(out))
    with torch.no_grad():
        out = model.eval()(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 2, 64, 64)
    assert seen == [(1, 128, 8, 8), (1, 128, 16, 16), (1, 32, 32, 32)]  # 1/8, 1/4 (padded), 1/2
    assert quarter[0].shape[-2:] == (15, 15)  # the unpadded max-pool leaves 4k - 1


def test_shrunk_paper_layout_overfits_a_tiny_training_set():
    torch.manual_seed(0)
    images, masks = shapes(8, 32, 0)
    model = TransUNet(1, 3, 32, **SMALL, mean=float(images.mean()), std=float(images.std()), layout="paper")
    fetch = image_fetch(images, "cpu")
    rows = np.arange(8)
    train(model, fetch, masks, rows, TrainSettings(3e-3, 0, 80, 8, 0.0, 0))
    with torch.no_grad():
        preds = list(model(fetch(rows)).argmax(1).numpy())
    assert split_dice(preds, list(masks), 3) > 0.9


def test_preset_paper_picks_the_paper_layout_at_the_released_size_and_options_win():
    assert registry.check_options("seg-transunet", {})["layout"] == "radprobe"
    assert _paper_size() == {"widths": [64, 256, 512, 1024], "vit_dim": 1024, "vit_depth": 24,
                             "vit_heads": 16, "decoder_channels": [256, 128, 64, 16]}  # fmt: skip
    assert registry.check_options("seg-transunet", {"preset": "paper"})["layout"] == "paper"
    small = registry.check_options("seg-transunet", {"preset": "paper", **SMALL})
    assert small["layout"] == "paper" and {k: small[k] for k in SMALL} == SMALL
    mine = registry.check_options("seg-transunet", {"preset": "paper", "layout": "radprobe"})
    assert mine["layout"] == "radprobe" and mine["lrs"][0] == 1e-4


@pytest.mark.parametrize("layout", ["radprobe", "paper"])
def test_both_layouts_pad_odd_sides_and_crop_back(layout):
    model = TransUNet(3, 2, 48, **SMALL, layout=layout).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 37, 50)).shape == (1, 2, 37, 50)
