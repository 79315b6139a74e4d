"""Hub weights that cannot be fetched give one clear line, never a traceback or a download."""

from __future__ import annotations

import pytest

from radprobe.backbones import create_backbone
from radprobe.errors import RadprobeError, WeightsError


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


@pytest.mark.parametrize("name", ["dinov2-s", "timm:resnet10t.c3_in1k"])
def test_timm_hub_offline_is_a_weights_error(name, offline_hub):
    with pytest.raises(WeightsError) as err:
        create_backbone(name)
    msg = _one_line(err)
    assert name in msg and "--weights PATH" in msg


def test_hf_hub_offline_is_a_weights_error(offline_hub):
    pytest.importorskip("transformers")
    with pytest.raises(WeightsError) as err:
        create_backbone("rad-dino")
    msg = _one_line(err)
    assert "rad-dino" in msg and "microsoft/rad-dino" in msg and "--weights PATH" in msg


def test_hf_repo_config_unavailable_offline(offline_hub):
    pytest.importorskip("transformers")
    with pytest.raises(WeightsError, match="--weights"):
        create_backbone("hf:someone/unknown-vit", pretrained=False)


def test_biomedclip_hub_needs_extra_or_network(offline_hub):
    with pytest.raises(RadprobeError) as err:
        create_backbone("biomedclip")
    assert "--weights" in _one_line(err)


def test_biomedclip_loads_an_open_clip_checkpoint_without_open_clip(tmp_path, monkeypatch):
    """The image trunk is plain timm; an open_clip file's visual.trunk.* keys are found by prefix."""
    import torch
    from safetensors.torch import save_file

    from radprobe.backbones.base import CLIP_MEAN

    real_create = __import__("timm").create_model

    def small(name, **kw):  # a ViT-B is slow to initialise on 2 CPUs; same keys at ViT-Ti size
        return real_create("vit_tiny_patch16_224" if name == "vit_base_patch16_224" else name, **kw)

    monkeypatch.setattr("timm.create_model", small)
    trunk = create_backbone("biomedclip", pretrained=False).model.state_dict()
    ckpt = {f"visual.trunk.{k}": v + 1 for k, v in trunk.items()}
    ckpt["visual.head.proj.weight"] = torch.zeros(512, 192)  # the CLIP projection: not part of the trunk
    ckpt["text.transformer.embeddings.word_embeddings.weight"] = torch.zeros(3, 3)
    path = tmp_path / "open_clip_model.safetensors"
    save_file(ckpt, str(path))
    # a whole CLIP checkpoint: timm's open_clip converter keeps just the image trunk
    bb = create_backbone("biomedclip", weights=path)
    assert bb.preprocess.mean == CLIP_MEAN and bb.info.source == f"file:{path}"
    assert torch.equal(bb.model.state_dict()["pos_embed"], trunk["pos_embed"] + 1)
    assert "partial_weights" not in bb.info.extra
    del ckpt["visual.trunk.blocks.0.attn.qkv.weight"]
    save_file(ckpt, str(path))
    with pytest.raises(WeightsError, match=r"missing blocks\.0\.attn\.qkv\.weight"):
        create_backbone("biomedclip", weights=path)


def test_missing_hf_extra_is_named_but_listing_still_works(monkeypatch):
    import sys

    from radprobe.backbones import list_backbones

    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(RadprobeError, match=r"radprobe\[hf\]"):
        create_backbone("rad-dino")
    assert any(r["name"] == "rad-dino" and r["params"] > 80e6 for r in list_backbones())


def test_unreachable_hub_switches_the_hf_clients_offline_for_the_call(monkeypatch):
    from huggingface_hub import constants

    from radprobe.backbones import weights

    for v in weights._PROXY_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(weights, "hub_reachable", lambda host, timeout=3.0: False)
    with pytest.raises(RuntimeError), weights.hub_access():
        assert constants.HF_HUB_OFFLINE is True
        raise RuntimeError("a failed download")
    assert constants.HF_HUB_OFFLINE is False  # restored, also after an error
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # a direct probe cannot judge a proxy
    with weights.hub_access():
        assert constants.HF_HUB_OFFLINE is False


def test_offline_hub_weights_fail_at_once_with_one_line(monkeypatch):
    import socket

    from huggingface_hub import constants

    from radprobe.backbones import weights

    for v in weights._PROXY_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", "/nonexistent-hub-cache")
    monkeypatch.setattr(weights, "hub_reachable", lambda host, timeout=3.0: False)
    attempts: list[object] = []  # a retry loop would open connections; offline mode opens none

    def connect(sock: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket.socket, "connect", connect)
    with pytest.raises(WeightsError) as err:
        create_backbone("timm:test_vit")
    assert attempts == []
    assert "--weights PATH" in str(err.value) and "\n" not in str(err.value)
