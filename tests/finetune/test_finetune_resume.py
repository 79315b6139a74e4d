"""Checkpoints, resumption and split hygiene of the trained protocols."""

from __future__ import annotations

from pathlib import Path

import pytest
from ft_helpers import fast_options, make_cfg

from radprobe.data.dataset import Dataset
from radprobe.finetune import train
from radprobe.results import ResultStore
from radprobe.results.predictions import predictions_path
from radprobe.run.evaluate import evaluate

# LoRA with dropout and augmentation on: resumption must replay every random draw.
OPTS = {"lora": fast_options("lora", epochs=3, dropout=0.1, augment=True, hflip=True)}


class Crash(RuntimeError):
    pass


def _metrics(summary) -> dict[str, float]:
    return {r["metric"]: r["value"] for r in summary.rows}


def test_killed_run_resumes_to_the_uninterrupted_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[str] = []
    original = Dataset.load_image

    def logging_load(self: Dataset, record):  # type: ignore[no-untyped-def]
        loads.append(record.split)
        return original(self, record)

    monkeypatch.setattr(Dataset, "load_image", logging_load)
    whole = evaluate(make_cfg(tmp_path / "whole", ["lora"], OPTS))
    # the test split is read once, after training and validation are over; with the decoded-image
    # cache every other image is decoded once for all three epochs
    first_test = loads.index("test")
    assert loads[first_test:] == ["test"] * 60
    assert loads[:first_test].count("val") == 30 and loads[:first_test].count("train") == 210

    def crash(epoch: int) -> None:
        if epoch == 2:
            raise Crash("killed after epoch 2")

    # decoding per epoch from here on, so the loads show which epochs ran (and the rows must equal
    # those of the run above, which read decoded images)
    out = tmp_path / "resumed"
    monkeypatch.setattr(train, "after_checkpoint", crash)
    with pytest.raises(Crash):
        evaluate(make_cfg(out, ["lora"], OPTS, image_cache=False))
    with ResultStore(out) as store:
        assert store.rows() == []  # nothing scored before training finished
    (ckpt_dir,) = (out / "checkpoints").iterdir()
    names = sorted(p.name for p in ckpt_dir.iterdir())
    assert "last.safetensors" in names and any(n.startswith("best-e") for n in names)
    assert not [n for n in names if n.endswith(".tmp")]

    monkeypatch.setattr(train, "after_checkpoint", None)
    notes: list[str] = []
    loads.clear()
    resumed = evaluate(make_cfg(out, ["lora"], OPTS, image_cache=False), warn=notes.append)
    assert any("resuming" in n and "epoch 2" in n for n in notes)
    assert loads.count("train") == 210 // 16 * 16  # only the third epoch ran
    assert _metrics(resumed) == _metrics(whole)
    a, b = whole.rows[0], resumed.rows[0]
    assert a["eval_key"] == b["eval_key"]
    strip = [{k: v for k, v in h.items() if k != "imgs_per_s"} for h in a["selected"]["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "imgs_per_s"} for h in b["selected"]["history"]]
    assert predictions_path(out, b["eval_key"]).is_file()

    # a finished run is rescored from its best checkpoint without training again
    loads.clear()
    again = evaluate(make_cfg(out, ["lora"], OPTS, image_cache=False))
    assert "train" not in loads and "val" not in loads
    assert _metrics(again) == _metrics(whole)


def test_keep_checkpoints_false_removes_them(tmp_path: Path) -> None:
    opts = {"bitfit": fast_options("bitfit", epochs=1, keep_checkpoints=False)}
    summary = evaluate(make_cfg(tmp_path, ["bitfit"], opts, n_boot=0))
    assert summary.rows and summary.rows[0]["ci_low"] is None
    assert not any((tmp_path / "checkpoints").glob("*/*.safetensors"))
