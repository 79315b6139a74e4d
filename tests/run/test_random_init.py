"""Random-init controls from the command line and from study files."""

from __future__ import annotations

import json

import yaml

from radprobe.cli import main
from radprobe.run.study import expand, load_study


def test_eval_random_init_builds_the_seeded_control_without_weights(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RADPROBE_CACHE", str(tmp_path / "cache"))
    argv = ["eval", "-b", "timm:test_vit", "--random-init", "-d", "synthetic:cls2d-binary", "-p", "knn"]
    code = main([*argv, "-o", str(tmp_path / "run"), "--bootstrap", "10", "--resolution", "64", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    rows = json.loads(out.out)["rows"]
    assert rows and {r["weights_digest"] for r in rows} == {"random-init:seed0"}


def test_random_init_and_weights_exclude_each_other(tmp_path, capsys):
    ckpt = tmp_path / "w.safetensors"
    ckpt.write_bytes(b"x")
    argv = [
        "eval",
        "-b",
        "timm:test_vit",
        "--random-init",
        "--weights",
        str(ckpt),
        "-d",
        "synthetic:cls2d-binary",
    ]
    code = main([*argv, "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "--random-init" in err and "Traceback" not in err


def test_study_pretrained_false_is_its_own_job_and_old_keys_stay(tmp_path):
    base = {"backbones": ["test:vit-tiny"], "datasets": ["synthetic:cls2d-binary"], "protocols": ["knn"]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(base))
    plain = expand(load_study(str(path)))[0]
    assert "pretrained" not in plain.spec()["backbone"]  # keys written before the option still match
    path.write_text(yaml.safe_dump({**base, "backbones": [{"name": "test:vit-tiny", "pretrained": False}]}))
    control = expand(load_study(str(path)))[0]
    assert control.key != plain.key and control.spec()["backbone"]["pretrained"] is False


def test_the_control_is_seeded_the_same_whatever_the_global_rng():
    import torch

    from radprobe.backbones import create_backbone

    torch.manual_seed(1)
    a = create_backbone("timm:test_vit", pretrained=False, resolution=64)
    torch.manual_seed(2)  # the global stream must not leak into the control's weights
    b = create_backbone("timm:test_vit", pretrained=False, resolution=64)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    weights = [v for k, v in sa.items() if k.endswith("weight") and v.ndim > 1]
    assert weights and all(float(w.std()) > 0 for w in weights)  # an init, not zeros
    assert a.info.weights_digest == b.info.weights_digest == "random-init:seed0"
