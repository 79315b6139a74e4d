#!/usr/bin/env bash
# Checks for a lent GPU machine, run from the repository root in one call (a few minutes):
# radprobe's CUDA paths through the CLI (bf16 extraction and training, CUDA peak memory), the same
# frozen rows on CPU for comparison, bf16 vs fp32 features, bench_finetune on ViT-B/14 at 224 px in
# bf16 and bench_extraction on the GPU (ViT-S/14, ViT-B/14, ViT-L/14 at 224 px over 12,288 generated
# PNGs, each without the decoded-image cache, building its entry and reading it as a second backbone:
# goal ratio >= 0.9 reading it; about 4 minutes, at most 450 s), and bench_peft_memory (ViT-B/14,
# 224 px, batch 64, bf16: where LoRA's and DoRA's memory goes against finetune; ten short cases,
# under 2 minutes, at most 150 s), bench_decode (2,048 JPEGs: PIL vs nvJPEG decode rate and the
# largest pixel difference, at most 90 s: whether GPU decoding would pay for the decoded-image
# cache's first pass) and bench_train_data (768 generated 512-px PNGs decoded at 112 and 224 px: the
# trained protocols' loader with per-item CPU augmentation against batches augmented on the GPU, no
# model; under a minute, at most 90 s). Everything together can pass 10 minutes: on a machine lent
# for 10-minute calls, run it in two, e.g. `BENCHES="extraction decode train_data"` after
# `SKIP_CLI=1 BENCHES="finetune peft_memory"`. SKIP_CLI=1 and BENCHES=... pick parts:
# `SKIP_CLI=1 BENCHES=extraction bash bench/gpu_checks.sh` is the extraction case alone, and
# `SKIP_CLI=1 BENCHES=peft_memory bash bench/gpu_checks.sh` the PEFT memory case alone
# (bench/results/peft_memory_gpu.json); `SKIP_CLI=1 BENCHES=train_data` the training data path alone.
# The machine has torch but no network: missing packages travel as wheels in .whl/ (see the
# device notes); OUT is the folder whose files come back.
set -uo pipefail
OUT=${OUT:-/tmp/radprobe-gpu}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1 RADPROBE_CACHE=/tmp/radprobe-cache
rp=(python3 -c "import sys; from radprobe.cli import main; sys.argv[0] = 'radprobe'; sys.exit(main())")

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, timm, peft; print('torch', torch.__version__, 'timm', timm.__version__, 'peft', peft.__version__, torch.cuda.get_device_name(0))"
} 2>&1 | tee "$OUT/gpu.txt"

if [ "${SKIP_CLI:-0}" != 1 ]; then
cls=(-b test:vit-tiny -d synthetic:cls2d-multilabel --bootstrap 200 --json)
for run in "knn,linear cpu" "knn,linear cuda" "finetune,lora cuda"; do
  set -- $run
  timeout 200 "${rp[@]}" eval "${cls[@]}" -p "$1" --device "$2" --out "/tmp/r-$2" >"$OUT/cls_${1//,/_}_$2.json"
  echo "eval $run rc=$?"
done
for p in seg-linear lora; do
  timeout 200 "${rp[@]}" eval -b test:vit-tiny -d synthetic:seg2d -p $p --bootstrap 200 --device cuda --json \
    --out /tmp/r-seg >"$OUT/seg_${p}_cuda.json"
  echo "seg $p cuda rc=$?"
done
# bf16 features on CUDA against fp32 on CPU: own cache keys, and how far apart they are
python3 - "$OUT/precision.json" <<'PY'
import json, sys, tempfile
import numpy as np
from radprobe.backbones import create_backbone
from radprobe.data import load_dataset
from radprobe.features.cache import FeatureCache, FeatureSpec
from radprobe.features.extract import extract_split
bb = create_backbone("dinov2-s", pretrained=False, resolution=224)
ds = load_dataset("synthetic:cls2d-multiclass")
cache = FeatureCache(tempfile.mkdtemp())
out = {}
for dev in ("cpu", "cuda"):
    fs, st = extract_split(bb, ds, "train", cache, FeatureSpec(n_blocks=4), device=dev, batch_size=64)
    # patch means: a random-init ViT's cls output hardly depends on the image, its patch tokens do
    out[dev] = {"key": fs.key, "precision": fs.meta["precision"], "imgs_per_s": round(st.imgs_per_s, 1), "x": np.asarray(fs.pooled)}
a, b = out["cpu"].pop("x"), out["cuda"].pop("x")
cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
out["max_rel_diff"] = float(np.abs(a - b).max() / np.abs(a).max())
out["min_cosine"] = float(cos.min())
json.dump(out, open(sys.argv[1], "w"), indent=1)
print(out)
PY
echo "precision rc=$?"
# the decoded-image cache on CUDA (uint8 batches normalised on the device) against per-image decoding
python3 - "$OUT/image_cache_cuda.json" <<'PY'
import json, sys, tempfile
from pathlib import Path
import numpy as np
from radprobe.backbones import create_backbone
from radprobe.data import load_dataset
from radprobe.features.cache import FeatureCache, FeatureSpec
from radprobe.features.extract import extract_split
from radprobe.features.images import ImageCache
bb = create_backbone("dinov2-s", pretrained=False, resolution=224)
ds = load_dataset("synthetic:cls2d-multiclass")
tmp = Path(tempfile.mkdtemp())
kw = dict(spec=FeatureSpec(n_blocks=4), device="cuda", batch_size=64)
old, _ = extract_split(bb, ds, "train", FeatureCache(tmp / "a"), **kw)
images = ImageCache(tmp / "i")
runs = [extract_split(bb, ds, "train", FeatureCache(tmp / d), images=images, **kw) for d in ("b", "c")]
a = np.asarray(old.pooled)
out = {"paths": [st.extra["data_path"] for _, st in runs], "storage": runs[1][1].extra.get("image_storage")}
for (fs, st), name in zip(runs, ("build", "hit")):
    out[f"max_rel_diff_{name}"] = float(np.abs(np.asarray(fs.pooled) - a).max() / np.abs(a).max())
json.dump(out, open(sys.argv[1], "w"), indent=1)
print(out)
PY
echo "image cache cuda rc=$?"
# the study executor under torchrun on CUDA: two ranks share the GPU and claim groups; rows as one process's
printf 'name: tr\nbackbones: [test:vit-tiny, test:cnn-tiny]\ndatasets: [synthetic:cls2d-binary, synthetic:cls2d-multiclass]\nprotocols: {knn: {}, logreg: {}}\ndevice: cuda\n' >/tmp/tr.yaml
timeout 200 "${rp[@]}" study run /tmp/tr.yaml -o /tmp/tr-seq >"$OUT/study_seq.txt" 2>&1
timeout 200 python3 -m torch.distributed.run --nproc_per_node 2 -m radprobe study run /tmp/tr.yaml -o /tmp/tr-2 >"$OUT/study_torchrun.txt" 2>&1
echo "study torchrun rc=$?"
python3 - "$OUT/study_torchrun.json" <<'PY'
import json, sqlite3, sys
q = "select eval_key, metric, value from results order by eval_key, metric"
a, b = (sqlite3.connect(f"/tmp/{d}/results.db").execute(q).fetchall() for d in ("tr-seq", "tr-2"))
json.dump({"rows": len(a), "equal": a == b}, open(sys.argv[1], "w"))
print("torchrun rows", len(a), "equal", a == b)
PY
fi
for b in ${BENCHES-finetune extraction peft_memory decode train_data}; do
  limit=300; [ "$b" = extraction ] && limit=450; [ "$b" = peft_memory ] && limit=150
  [ "$b" = decode ] && limit=90; [ "$b" = train_data ] && limit=90
  (cd bench && timeout $limit python3 "bench_$b.py" --gpu && cp "results/${b}_gpu.json" "$OUT/")
  echo "bench $b rc=$?"
done
