"""Uniform feature outputs: shapes, what cls/pooled/blocks/grid mean, determinism, resolutions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from radprobe.backbones import BackboneEntry, BuildOptions, create_backbone
from radprobe.backbones.testing import WIDTH
from radprobe.backbones.timm_zoo import wrap_timm
from radprobe.errors import RadprobeError

VITS = {"test:vit-tiny": 1, "test:vit-tiny-reg": 5}  # name -> prefix tokens (cls + registers)


def _wrap(model: nn.Module, name: str = "test:custom"):
    model.pretrained_cfg = {"input_size": (3, 64, 64)}
    entry = BackboneEntry(name=name, family="test", arch=name, source="x", description="", builder=None)  # type: ignore[arg-type]
    return wrap_timm(model.eval(), entry, BuildOptions(pretrained=False), hub_source="x")


@pytest.mark.parametrize("name", list(VITS))
def test_vit_output_shapes(name, batch):
    bb = create_backbone(name)
    out = bb(batch, n_blocks=2, grid_layers=(0, -1))
    assert bb.info.embed_dim == WIDTH and bb.info.patch_size == 8 and bb.info.num_blocks == 2
    assert out.cls.shape == out.pooled.shape == (2, WIDTH)
    assert out.blocks.shape == (2, 2, 2, WIDTH)
    assert set(out.grid) == {0, -1}
    assert all(g.shape == (2, WIDTH, 8, 8) for g in out.grid.values())


@pytest.mark.parametrize(("name", "n_prefix"), list(VITS.items()))
def test_pooled_is_mean_of_final_normed_patch_tokens_without_registers(name, n_prefix, batch):
    bb = create_backbone(name)
    with torch.inference_mode():
        out = bb(batch, n_blocks=2, grid_layers=(-1,))
        tokens = bb.model.forward_features(batch)  # timm: all tokens after the final norm
    assert tokens.shape[1] == n_prefix + 64
    torch.testing.assert_close(out.pooled, tokens[:, n_prefix:].mean(1))
    torch.testing.assert_close(out.cls, tokens[:, 0])
    torch.testing.assert_close(out.blocks[:, -1, 0], out.cls)
    torch.testing.assert_close(out.blocks[:, -1, 1], out.pooled)
    torch.testing.assert_close(out.grid[-1].flatten(2).transpose(1, 2), tokens[:, n_prefix:])
    if n_prefix > 1:  # the register tokens really are different, so including them would show
        assert not torch.allclose(out.pooled, tokens[:, 1:].mean(1), atol=1e-4)


def test_blocks_are_oldest_first(batch):
    bb = create_backbone("test:vit-tiny")
    out = bb(batch, n_blocks=2, grid_layers=(0, 1))
    torch.testing.assert_close(out.blocks[:, 0, 1], out.grid[0].mean((2, 3)))
    torch.testing.assert_close(out.blocks[:, 1, 1], out.grid[1].mean((2, 3)))
    assert not torch.allclose(out.blocks[:, 0], out.blocks[:, 1])


def test_cnn_outputs(batch):
    bb = create_backbone("test:cnn-tiny")
    chans = bb.info.extra["stage_channels"]
    out = bb(batch, n_blocks=4, grid_layers=(0, -1))  # CNNs always give one "block"
    assert bb.info.patch_size is None and bb.info.embed_dim == chans[-1] == 64
    assert out.cls.shape == (2, 64)
    torch.testing.assert_close(out.cls, out.pooled)
    assert out.blocks.shape == (2, 1, 2, 64)
    torch.testing.assert_close(out.blocks[:, 0, 0], out.pooled)
    torch.testing.assert_close(out.grid[-1].mean((2, 3)), out.pooled)
    assert out.grid[0].shape[:2] == (2, chans[0]) and out.grid[-1].shape == (2, 64, 2, 2)


def test_timm_prefix_vit_matches_forward_features():
    bb = create_backbone("timm:vit_tiny_patch16_224", pretrained=False)
    assert (bb.info.embed_dim, bb.info.patch_size, bb.preprocess.resolution) == (192, 16, 224)
    assert bb.info.family == "timm" and bb.info.weights_digest == "random-init:seed0"
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = bb(x, n_blocks=3, grid_layers=(-2,))
        tokens = bb.model.forward_features(x)
    assert out.blocks.shape == (1, 3, 2, 192) and out.grid[-2].shape == (1, 192, 14, 14)
    torch.testing.assert_close(out.pooled, tokens[:, 1:].mean(1))
    torch.testing.assert_close(out.cls, tokens[:, 0])


def test_timm_prefix_cnn():
    bb = create_backbone("timm:resnet10t", pretrained=False)
    out = bb(torch.randn(1, 3, 96, 96), grid_layers=(-1,))
    assert out.cls.shape == (1, 512) and out.grid[-1].shape == (1, 512, 3, 3)


def test_batch_of_one_at_non_native_resolution():
    bb = create_backbone("test:vit-tiny-reg", resolution=96)
    assert bb.preprocess.resolution == 96 and bb.info.native_resolution == 64
    out = bb(torch.randn(1, 3, 96, 96), grid_layers=(-1,))
    assert out.cls.shape == (1, WIDTH) and out.grid[-1].shape == (1, WIDTH, 12, 12)
    # the same model also accepts other sizes at forward time (position embeddings interpolate)
    assert bb(torch.randn(1, 3, 40, 56), grid_layers=(-1,)).grid[-1].shape == (1, WIDTH, 5, 7)


def test_inference_mode_matches_no_grad(batch):
    bb = create_backbone("test:vit-tiny")
    with torch.inference_mode():
        a = bb(batch, n_blocks=2)
    with torch.no_grad():
        b = bb(batch, n_blocks=2)
    torch.testing.assert_close(a.blocks, b.blocks)


@pytest.mark.parametrize("name", ["test:vit-tiny", "test:vit-tiny-reg", "test:cnn-tiny"])
def test_creation_is_deterministic_and_leaves_the_callers_rng_alone(name):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = create_backbone(name)
    assert torch.equal(torch.rand(3), expected)
    b = create_backbone(name)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.info.weights_digest == "random-init:seed0" and not a.training


def test_bad_block_requests_are_user_errors(batch):
    bb = create_backbone("test:vit-tiny")
    with pytest.raises(RadprobeError, match="n_blocks"):
        bb(batch, n_blocks=3)
    with pytest.raises(RadprobeError, match="grid layer 5"):
        bb(batch, grid_layers=(5,))
    with pytest.raises(RadprobeError, match="grid layer"):
        create_backbone("test:cnn-tiny")(batch, grid_layers=(-6,))


def test_model_without_class_token_reports_pooled_as_cls():
    from timm.models.vision_transformer_sam import VisionTransformerSAM

    torch.manual_seed(0)
    sam = VisionTransformerSAM(
        img_size=64,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        global_attn_indexes=(1,),
        window_size=4,
        use_rel_pos=True,
        neck_chans=16,
        num_classes=0,
    )
    bb = _wrap(sam)
    assert bb.info.embed_dim == 16 and bb.info.extra["cls_is_pooled"]
    out = bb(torch.randn(1, 3, 96, 96), n_blocks=2, grid_layers=(-1,))
    torch.testing.assert_close(out.cls, out.pooled)
    torch.testing.assert_close(out.pooled, out.grid[-1].mean((2, 3)))
    assert out.grid[-1].shape == (1, 16, 12, 12)  # the neck is SAM's "final norm"


def test_eva_with_registers_excludes_them():
    from timm.models.eva import Eva

    torch.manual_seed(0)
    eva = Eva(
        img_size=64,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_reg_tokens=4,
        use_abs_pos_emb=False,
        use_rot_pos_emb=True,
        rope_type="dinov3",
        dynamic_img_size=True,
        use_fc_norm=False,
        num_classes=0,
    )
    bb = _wrap(eva)
    x = torch.randn(2, 3, 80, 80)
    with torch.inference_mode():
        out = bb(x)
        tokens = eva.forward_features(x)
    torch.testing.assert_close(out.pooled, tokens[:, 5:].mean(1))
    torch.testing.assert_close(out.cls, tokens[:, 0])


def test_avg_pool_vit_uses_its_fc_norm_as_final_norm():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(
        img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, global_pool="avg", num_classes=0
    )
    assert isinstance(vit.norm, nn.Identity)  # timm moves the final norm to fc_norm here
    out = _wrap(vit)(torch.randn(1, 3, 64, 64), grid_layers=(-1,))
    tokens = out.grid[-1].flatten(2)  # (1, D, N): each token must be layer-normed over D
    torch.testing.assert_close(tokens.mean(1), torch.zeros(1, 64), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["test:vit-tiny", "test:cnn-tiny"])
def test_backbone_state_dict_holds_each_weight_once(name):
    bb = create_backbone(name)
    keys = list(bb.state_dict())
    assert keys and all(k.startswith("model.") for k in keys)
    assert len(keys) == len(bb.model.state_dict())
