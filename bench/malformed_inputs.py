"""Malformed invocations of the installed ``radprobe`` executable, recorded and compared.

Every case runs ``radprobe ARGV`` in a subprocess, in a fresh temporary directory (its working
directory) with its own RADPROBE_CACHE and HF_HUB_OFFLINE=1; the files a case needs (manifests, PNGs,
study files, results.db variants, checkpoints) are written there first, and a secret PNG is written
outside the data root of the cases that try to escape it. The synthetic datasets are generated once
per ``run`` by the code under test and copied into each case's cache.

A case passes when its exit code is one it allows (2, a refusal; 1 as well for ``data check`` on a
missing path, an unknown option or bad content, since that command reports the problems it finds with
exit 1; never for files outside the data root, which are refused), stderr has at most two lines,
stdout and stderr show no Python traceback, nothing outside the cache was created, changed or removed
(a results.db or run directory of a failing command, a rewritten study.yaml), and no file outside the
data root was read (the command succeeded on it, a results.db holds rows for it, or the feature cache
names it).

    python bench/malformed_inputs.py run --out OUT.json [--label NAME] [--only ID,ID]
    python bench/malformed_inputs.py table BEFORE.json AFTER.json

The code under test is whatever ``import radprobe`` finds for the installed executable: set
PYTHONPATH=<checkout>/src to measure another checkout through the same console script.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TIMEOUT_S = 300
TINY = "test:vit-tiny"
CNN = "test:cnn-tiny"
CLS = "synthetic:cls2d-binary"
SEG = "synthetic:seg2d"
SECRET = "outside_secret.png"
MANIFEST = "data/set/m.csv"  # the data root is data/set; ../../outside_secret.png leaves it
# `data check` reports every problem it finds (a missing path, an unknown option, bad content) and then
# exits 1, as its --help documents; its cases allow 1 or 2, except files outside the data root: reading
# them is refused (exit 2), not reported
REPORTS = (1, 2)


@dataclass(frozen=True)
class Case:
    """One malformed invocation: ARGV with {placeholders}, the files it needs, the exits it allows."""

    id: str
    argv: tuple[str, ...]
    setup: tuple[str, ...] = ()
    codes: tuple[int, ...] = (2,)
    secret: bool = False  # the inputs name a file outside the data root


def case(cid: str, *argv: str, setup: str = "", codes: tuple[int, ...] = (2,), secret: bool = False) -> Case:
    return Case(cid, tuple(argv), tuple(s for s in setup.split(",") if s), codes, secret)


def _eval(*extra: str, d: str = CLS) -> tuple[str, ...]:
    return ("eval", "-b", TINY, "-d", d, "-o", "{out}", "--bootstrap", "0", *extra)


def _extract(*extra: str, d: str = CLS) -> tuple[str, ...]:
    return ("extract", "-b", TINY, "-d", d, *extra)


STUDY_RUN = ("study", "run", "{tmp}/study.yaml", "-o", "{out}")
STUDY_RUN_IN_RUN = ("study", "run", "{tmp}/study.yaml", "-o", "{run}")  # run/ holds study.yaml already
CHECK = ("data", "check")
COMPARE = ("compare", "{run}", "--a", TINY, "--b", CNN)

USAGE_CASES = [
    case("unknown-command", "bogus"),
    case("unknown-root-flag", "--bogus"),
    case("eval-unknown-flag", *_eval("--frob")),
    case("eval-no-backbone", "eval", "-d", CLS, "-o", "{out}"),
    case("eval-no-dataset", "eval", "-b", TINY, "-o", "{out}"),
    case("eval-no-out", "eval", "-b", TINY, "-d", CLS),
    case("eval-batch-size-0", *_eval("--batch-size", "0")),
    case("eval-batch-size-text", *_eval("--batch-size", "abc")),
    case("eval-resolution-negative", *_eval("--resolution", "-8")),
    case("eval-resolution-0", *_eval("--resolution", "0")),
    case("eval-bootstrap-negative", *_eval("--bootstrap", "-1")),
    case("eval-seed-text", *_eval("--seed", "abc")),
    case("eval-seed-negative", *_eval("--seed", "-1")),
    case("eval-seed-too-big", *_eval("--seed", str(2**32))),
    case("eval-num-workers-negative", *_eval("--num-workers", "-1")),
    case("eval-volume-pool-median", *_eval("--volume-pool", "median")),
    case("eval-extra-argument", *_eval("stray")),
    case("eval-device-unknown", *_eval("--device", "tpu9")),
    case("extract-no-backbone", "extract", "-d", CLS),
    case("extract-no-dataset", "extract", "-b", TINY),
    case("extract-batch-size-0", *_extract("--batch-size", "0")),
    case("extract-resolution-negative", *_extract("--resolution", "-8")),
    case("extract-unknown-flag", *_extract("--frob")),
    case("extract-unknown-backbone", "extract", "-b", "test:nope", "-d", CLS),
    case("eval-unknown-backbone", "eval", "-b", "bogus:thing", "-d", CLS, "-o", "{out}"),
    case("results-no-dir", "results"),
    case("results-format-xml", "results", "{run}", "--format", "xml", setup="run"),
    case("results-unknown-flag", "results", "{run}", "--bogus", setup="run"),
    case("compare-no-b", "compare", "{run}", "--a", TINY, setup="valid_run"),
    case("compare-bootstrap-0", *COMPARE, "--bootstrap", "0", setup="valid_run"),
    case("compare-seed-negative", *COMPARE, "--seed", "-1", setup="valid_run"),
    case("report-no-dir", "report"),
    case("report-unknown-flag", "report", "{run}", "--bogus", setup="run"),
    case("study-unknown-command", "study", "frob"),
    case("study-run-no-study", "study", "run"),
    case("study-run-workers-0", *STUDY_RUN, "--workers", "0", setup="study"),
    case("study-run-ray-cpus-0", *STUDY_RUN, "--ray-cpus", "0", setup="study"),
    case("study-run-executor-unknown", *STUDY_RUN, "--executor", "slurm", setup="study"),
    case("study-status-no-dir", "study", "status"),
    case("study-plan-no-study", "study", "plan"),
    case("data-unknown-command", "data", "frob"),
    case("data-check-no-spec", "data", "check"),
    case("cache-unknown-command", "cache", "frob"),
    case("cache-list-unknown-flag", "cache", "list", "--bogus"),
    case("cache-prune-no-filter", "cache", "prune"),
    case("cache-prune-max-gb-negative", "cache", "prune", "--max-gb", "-1"),
    case("cache-prune-older-than-text", "cache", "prune", "--older-than", "x"),
    case("cache-prune-older-than-negative", "cache", "prune", "--older-than", "-3"),
    case("backbones-unknown-flag", "backbones", "--bogus"),
    case("datasets-extra-argument", "datasets", "extra"),
    case("protocols-unknown-flag", "protocols", "--bogus"),
    case("demo-workers-0", "demo", "--workers", "0", "-o", "{out}"),
    case("demo-unknown-flag", "demo", "--frob", "-o", "{out}"),
    case("assets-unknown-command", "assets", "frob"),
    case("assets-pull-unknown-bundle", "assets", "pull", "bogus", "--cache", "{tmp}/assets"),
    case("assets-status-extra-argument", "assets", "status", "extra"),
]

OPTION_CASES = [
    case("eval-protocol-unknown", *_eval("-p", "bogus")),
    case("eval-protocol-empty", *_eval("-p", ",")),
    case("eval-knn-ks-0", *_eval("--set", "knn.ks=0")),
    case("eval-knn-ks-negative", *_eval("--set", "knn.ks=-5")),
    case("eval-knn-ks-text", *_eval("--set", "knn.ks=abc")),
    case("eval-knn-temperature-text", *_eval("--set", "knn.temperature=hot")),
    case("eval-knn-unknown-key", *_eval("--set", "knn.bogus=1")),
    case("eval-linear-epochs-0", *_eval("-p", "linear", "--set", "linear.epochs=0")),
    case("eval-linear-epochs-float", *_eval("-p", "linear", "--set", "linear.epochs=2.5")),
    case("eval-fewshot-shots-0", *_eval("-p", "fewshot", "--set", "fewshot.shots=0")),
    case("eval-fewshot-shots-negative", *_eval("-p", "fewshot", "--set", "fewshot.shots=-2")),
    case("eval-lora-rank-0", *_eval("-p", "lora", "--set", "lora.rank=0", "--set", "lora.epochs=1")),
    case("eval-set-unknown-protocol", *_eval("--set", "bogus.x=1")),
    case("eval-set-protocol-not-run", *_eval("-p", "knn", "--set", "linear.epochs=5")),
    case("eval-set-no-equals", *_eval("--set", "knn.ks")),
    case("eval-set-no-protocol", *_eval("--set", "ks=5")),
    case("eval-seg-protocol-on-classification", *_eval("-p", "seg-linear")),
    case("eval-mil-on-2d", *_eval("-p", "mil")),
    case("eval-classification-protocol-on-seg", *_eval("-p", "knn", d=SEG)),
    case("eval-out-is-a-file", "eval", "-b", TINY, "-d", CLS, "-o", "{tmp}/file.txt", setup="file"),
    case("eval-out-under-a-file", "eval", "-b", TINY, "-d", CLS, "-o", "{tmp}/file.txt/run", setup="file"),
    case("eval-weights-missing", *_eval("--weights", "{tmp}/nope.pth")),
    case("eval-weights-empty-pth", *_eval("--weights", "{tmp}/empty.pth"), setup="pth_empty"),
    case("eval-weights-garbage-pth", *_eval("--weights", "{tmp}/garbage.pth"), setup="pth_garbage"),
    case("eval-weights-empty-folder", *_eval("--weights", "{tmp}/weights"), setup="weights_dir"),
    case(
        "eval-weights-and-random-init",
        *_eval("--random-init", "--weights", "{tmp}/empty.pth"),
        setup="pth_empty",
    ),
    case("extract-weights-missing", *_extract("--weights", "{tmp}/nope.pth")),
    case("extract-weights-empty-pth", *_extract("--weights", "{tmp}/empty.pth"), setup="pth_empty"),
    case("extract-weights-garbage-pth", *_extract("--weights", "{tmp}/garbage.pth"), setup="pth_garbage"),
]

DATA_CASES = [
    case("eval-dataset-missing-path", *_eval(d="csv:{tmp}/nope.csv")),
    case("eval-dataset-unknown-synthetic", *_eval(d="synthetic:bogus")),
    case("eval-dataset-unknown-scheme", *_eval(d="bogus:{tmp}")),
    case("extract-dataset-missing-folder", *_extract(d="folder:{tmp}/nope")),
    case("check-missing-manifest", *CHECK, "csv:{tmp}/nope.csv", codes=REPORTS),
    case("check-missing-folder", *CHECK, "folder:{tmp}/nope", codes=REPORTS),
    case("check-csv-dotdot", *CHECK, "{csv}", setup="csv_dotdot", secret=True),
    case("check-csv-absolute", *CHECK, "{csv}", setup="csv_abs", secret=True),
    case("check-csv-absolute-with-root", *CHECK, "{csv}?root={tmp}/data/set", setup="csv_abs", secret=True),
    case("check-csv-symlink", *CHECK, "{csv}", setup="csv_symlink", secret=True),
    case("check-folder-symlink", *CHECK, "folder:{tmp}/data/tree", setup="folder_symlink", secret=True),
    case("check-seg-mask-dotdot", *CHECK, "{seg}", setup="seg_mask_dotdot", secret=True),
    case("check-nan-label", *CHECK, "{csv}", setup="csv_nan", codes=REPORTS),
    case("check-empty-label", *CHECK, "{csv}", setup="csv_empty_label", codes=REPORTS),
    case("check-stray-label", *CHECK, "{csv}?classes=normal,effusion", setup="csv_stray", codes=REPORTS),
    case("check-semicolon-csv", *CHECK, "{csv}", setup="csv_semicolon", codes=REPORTS),
    case("check-truncated-png", *CHECK, "{csv}", setup="csv_truncated_png", codes=REPORTS),
    case("check-missing-image", *CHECK, "{csv}", setup="csv_missing_image", codes=REPORTS),
    case("check-empty-manifest", *CHECK, "{csv}", setup="csv_empty", codes=REPORTS),
    case("check-header-only-manifest", *CHECK, "{csv}", setup="csv_header_only", codes=REPORTS),
    case("check-unknown-spec-option", *CHECK, "{csv}?bogus=1", setup="csv_clean", codes=REPORTS),
    case("check-synthetic-unknown-option", *CHECK, f"{CLS}?colour=red", codes=REPORTS),
    case("eval-csv-dotdot", *_eval(d="{csv}"), setup="csv_dotdot", secret=True),
    case("eval-csv-absolute", *_eval(d="{csv}"), setup="csv_abs", secret=True),
    case("eval-csv-symlink", *_eval(d="{csv}"), setup="csv_symlink", secret=True),
    case("eval-folder-symlink", *_eval(d="folder:{tmp}/data/tree"), setup="folder_symlink", secret=True),
    case("eval-seg-mask-dotdot", *_eval("-p", "seg-linear", d="{seg}"), setup="seg_mask_dotdot", secret=True),
    case("extract-csv-dotdot", *_extract(d="{csv}"), setup="csv_dotdot", secret=True),
    case("extract-csv-symlink", *_extract(d="{csv}"), setup="csv_symlink", secret=True),
    case("eval-nan-label", *_eval(d="{csv}"), setup="csv_nan"),
    case("eval-empty-label", *_eval(d="{csv}"), setup="csv_empty_label"),
    case("eval-stray-label", *_eval(d="{csv}?classes=normal,effusion"), setup="csv_stray"),
    case("eval-semicolon-csv", *_eval(d="{csv}"), setup="csv_semicolon"),
    case("eval-truncated-png", *_eval(d="{csv}"), setup="csv_truncated_png"),
    case("eval-missing-image", *_eval(d="{csv}"), setup="csv_missing_image"),
    case("eval-empty-manifest", *_eval(d="{csv}"), setup="csv_empty"),
    case("eval-unknown-spec-option", *_eval(d="{csv}?bogus=1"), setup="csv_clean"),
    case("extract-truncated-png", *_extract(d="{csv}"), setup="csv_truncated_png"),
    case("extract-empty-manifest", *_extract(d="{csv}"), setup="csv_empty"),
]

STUDY_CASES = [
    case("study-run-missing-file", *STUDY_RUN),
    case("study-run-invalid-yaml", *STUDY_RUN, setup="study_invalid_yaml"),
    case("study-run-not-a-mapping", *STUDY_RUN, setup="study_list"),
    case("study-run-empty-file", *STUDY_RUN, setup="study_empty"),
    case("study-run-unknown-key", *STUDY_RUN, setup="study_unknown_key"),
    case("study-run-unknown-protocol", *STUDY_RUN, setup="study_unknown_protocol"),
    case("study-run-knn-ks-0", *STUDY_RUN, setup="study_bad_option"),
    case("study-run-unknown-option-key", *STUDY_RUN, setup="study_unknown_option"),
    case("study-run-option-wrong-type", *STUDY_RUN, setup="study_wrong_type"),
    case("study-run-no-backbones", *STUDY_RUN, setup="study_no_backbones"),
    case("study-run-bootstrap-negative", *STUDY_RUN, setup="study_bootstrap_negative"),
    case("study-run-seed-negative", *STUDY_RUN, setup="study_seed_negative"),
    case("study-run-dataset-protocol-not-in-study", *STUDY_RUN, setup="study_dataset_protocol"),
    case("study-run-seg-protocol-on-classification", *STUDY_RUN, setup="study_seg_on_cls"),
    case("study-run-dataset-outside-root", *STUDY_RUN, setup="study_outside_root", secret=True),
    case("study-run-set-knn-ks-0", *STUDY_RUN, "--set", "protocols.knn.ks=0", setup="study_mapping"),
    case("study-run-set-no-equals", *STUDY_RUN, "--set", "protocols.knn.ks", setup="study"),
    case("study-run-builtin-unknown", "study", "run", "builtin:bogus", "-o", "{out}"),
    case(
        "study-run-out-is-a-file",
        "study",
        "run",
        "{tmp}/study.yaml",
        "-o",
        "{tmp}/file.txt",
        setup="study,file",
    ),
    case("study-run-out-under-a-file", *STUDY_RUN[:3], "-o", "{tmp}/file.txt/run", setup="study,file"),
    case("study-plan-invalid-yaml", "study", "plan", "{tmp}/study.yaml", setup="study_invalid_yaml"),
    case("study-plan-unknown-protocol", "study", "plan", "{tmp}/study.yaml", setup="study_unknown_protocol"),
    case("study-plan-unknown-key", "study", "plan", "{tmp}/study.yaml", setup="study_unknown_key"),
    case("study-plan-builtin-unknown", "study", "plan", "builtin:bogus"),
    case("study-plan-set-no-equals", "study", "plan", "{tmp}/study.yaml", "--set", "noequals", setup="study"),
]

STORE_CASES = [
    case("results-missing-dir", "results", "{tmp}/nope"),
    case("results-no-db", "results", "{run}", setup="run"),
    case("results-run-dir-is-a-file", "results", "{tmp}/file.txt", setup="file"),
    case("results-db-empty", "results", "{run}", setup="db_empty"),
    case("results-db-garbage", "results", "{run}", setup="db_garbage"),
    case("results-db-truncated", "results", "{run}", setup="db_truncated"),
    case("results-db-foreign", "results", "{run}", setup="db_foreign"),
    case("results-db-is-a-folder", "results", "{run}", setup="db_dir"),
    case("results-table-with-output", "results", "{run}", "--output", "{tmp}/rows.txt", setup="valid_run"),
    case(
        "results-output-is-a-folder", "results", "{run}", "-f", "csv", "--output", "{run}", setup="valid_run"
    ),
    case(
        "results-output-under-a-file",
        *("results", "{run}", "-f", "csv", "--output", "{tmp}/file.txt/rows.csv"),
        setup="valid_run,file",
    ),
    case("compare-no-db", *COMPARE, setup="run"),
    case("compare-db-garbage", *COMPARE, setup="db_garbage"),
    case("compare-unknown-backbone", "compare", "{run}", "--a", TINY, "--b", "test:nope", setup="valid_run"),
    case("compare-unknown-protocol", *COMPARE, "-p", "bogus", setup="valid_run"),
    case("compare-unknown-metric", *COMPARE, "--metric", "nope", setup="valid_run"),
    case("report-missing-dir", "report", "{tmp}/nope"),
    case("report-no-db", "report", "{run}", setup="run"),
    case("report-db-empty", "report", "{run}", setup="db_empty"),
    case("report-db-garbage", "report", "{run}", setup="db_garbage"),
    case("report-db-truncated", "report", "{run}", setup="db_truncated"),
    case("report-db-foreign", "report", "{run}", setup="db_foreign"),
    case("report-out-is-a-file", "report", "{run}", "-o", "{tmp}/file.txt", setup="valid_run,file"),
    case("report-out-under-a-file", "report", "{run}", "-o", "{tmp}/file.txt/report", setup="valid_run,file"),
    case("study-status-missing-dir", "study", "status", "{tmp}/nope"),
    case("study-status-no-db", "study", "status", "{run}", setup="run"),
    case("study-status-db-empty", "study", "status", "{run}", setup="db_empty"),
    case("study-status-db-garbage", "study", "status", "{run}", setup="db_garbage"),
    case("study-status-db-truncated", "study", "status", "{run}", setup="db_truncated"),
    case("study-status-db-foreign", "study", "status", "{run}", setup="db_foreign"),
    case("study-run-db-empty", *STUDY_RUN_IN_RUN, setup="study,run_study,db_empty"),
    case("study-run-db-garbage", *STUDY_RUN_IN_RUN, setup="study,run_study,db_garbage"),
    case("study-run-db-truncated", *STUDY_RUN_IN_RUN, setup="study,run_study,db_truncated"),
    case("study-run-db-foreign", *STUDY_RUN_IN_RUN, setup="study,run_study,db_foreign"),
    case("eval-out-db-empty", "eval", "-b", TINY, "-d", CLS, "-o", "{run}", setup="db_empty"),
    case("eval-out-db-garbage", "eval", "-b", TINY, "-d", CLS, "-o", "{run}", setup="db_garbage"),
    case("eval-out-db-foreign", "eval", "-b", TINY, "-d", CLS, "-o", "{run}", setup="db_foreign"),
]

CASES: list[Case] = USAGE_CASES + OPTION_CASES + DATA_CASES + STUDY_CASES + STORE_CASES

# valid neighbours of the fixtures: they must succeed, or the refusals above prove nothing
CONTROLS: list[Case] = [
    case("control-csv-clean", *CHECK, "{csv}", setup="csv_clean", codes=(0,)),
    case("control-folder-clean", *CHECK, "folder:{tmp}/data/tree", setup="folder_clean", codes=(0,)),
    case("control-seg-clean", *CHECK, "{seg}", setup="seg_clean", codes=(0,)),
    case("control-study-plan", "study", "plan", "{tmp}/study.yaml", setup="study", codes=(0,)),
    case("control-results", "results", "{run}", "-f", "csv", setup="valid_run", codes=(0,)),
    case("control-compare", *COMPARE, "--bootstrap", "20", setup="valid_run", codes=(0,)),
]


# ---------------------------------------------------------------- fixtures


def _png(path: Path, seed: int, levels: int = 256, size: int = 16) -> Path:
    """A grayscale 8-bit PNG written with the standard library (``levels=2``: a 0/1 mask)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    rows = b"".join(
        b"\x00" + bytes((seed * 7 + x * 3 + y * 5) % levels for x in range(size)) for y in range(size)
    )
    head = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", head)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


def _secret(tmp: Path) -> Path:
    """A PNG outside every data root (0/1 pixels, so it would pass as an image and as a mask)."""
    return _png(tmp / SECRET, seed=1, levels=2)


def _write_rows(path: Path, rows: list[dict[str, str]], delimiter: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = list(rows[0])
    lines = [delimiter.join(cols)] + [delimiter.join(r[c] for c in cols) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def _manifest(
    tmp: Path, change: Callable[[list[dict[str, str]]], None] | None = None, delimiter: str = ","
) -> Path:
    """A usable 24-row binary manifest (12 per class, one patient each), then ``change`` applied."""
    root = (tmp / MANIFEST).parent
    rows = []
    for i in range(24):
        _png(root / "img" / f"{i}.png", seed=i)
        label = "effusion" if i % 2 else "normal"
        rows.append({"path": f"img/{i}.png", "label": label, "patient_id": f"P{i:02d}"})
    if change is not None:
        change(rows)
    _write_rows(tmp / MANIFEST, rows, delimiter)
    return tmp / MANIFEST


def _row(i: int, **values: str) -> Callable[[list[dict[str, str]]], None]:
    def change(rows: list[dict[str, str]]) -> None:
        rows[i].update(values)

    return change


def _csv_symlink(tmp: Path) -> None:
    path = _manifest(tmp, _row(3, path="img/link.png"))
    (path.parent / "img" / "link.png").symlink_to(_secret(tmp))


def _csv_truncated_png(tmp: Path) -> None:
    path = _manifest(tmp)
    png = path.parent / "img" / "5.png"
    png.write_bytes(png.read_bytes()[:40])


def _folder(tmp: Path, link: bool) -> None:
    tree = tmp / "data" / "tree"
    for i in range(24):
        _png(tree / ("effusion" if i % 2 else "normal") / f"p{i:02d}_0.png", seed=i)
    (tree / "radprobe.yaml").write_text("patient_re: (p\\d+)_\n")
    if link:
        (tree / "normal" / "p99_link.png").symlink_to(_secret(tmp))  # matches patient_re, like the rest


def _seg(tmp: Path, bad_mask: str | None) -> None:
    root = tmp / "data" / "seg"
    rows = []
    for i in range(16):
        _png(root / "img" / f"{i}.png", seed=i)
        _png(root / "mask" / f"{i}.png", seed=i, levels=2)
        rows.append({"image": f"img/{i}.png", "mask": f"mask/{i}.png", "patient_id": f"P{i:02d}"})
    if bad_mask is not None:
        _secret(tmp)
        rows[2]["mask"] = bad_mask
    _write_rows(root / "seg.csv", rows)


VALID_STUDY = f"name: malformed\nbackbones: [{TINY}]\ndatasets: ['{CLS}']\nprotocols: [knn]\nbootstrap: 0\n"
STUDIES: dict[str, str] = {
    "study": VALID_STUDY,
    "study_invalid_yaml": f"backbones: [{TINY}\ndatasets: ['{CLS}']\nprotocols: {{knn: \n",
    "study_mapping": VALID_STUDY.replace("[knn]", "{knn: {}}"),
    "study_list": "- knn\n- linear\n",
    "study_empty": "",
    "study_unknown_key": VALID_STUDY + "epochz: 3\n",
    "study_unknown_protocol": VALID_STUDY.replace("[knn]", "[bogus]"),
    "study_bad_option": VALID_STUDY.replace("[knn]", "{knn: {ks: 0}}"),
    "study_unknown_option": VALID_STUDY.replace("[knn]", "{knn: {bogus: 1}}"),
    "study_wrong_type": VALID_STUDY.replace("[knn]", "{linear: {epochs: many}}"),
    "study_no_backbones": VALID_STUDY.replace(f"[{TINY}]", "[]"),
    "study_bootstrap_negative": VALID_STUDY.replace("bootstrap: 0", "bootstrap: -1"),
    "study_seed_negative": VALID_STUDY + "seeds: [-1]\n",
    "study_dataset_protocol": VALID_STUDY.replace(f"['{CLS}']", f"[{{spec: '{CLS}', protocols: [linear]}}]"),
    "study_seg_on_cls": VALID_STUDY.replace("[knn]", "[seg-linear]"),
}


def _study_fixture(text: str) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        (tmp / "study.yaml").write_text(text)

    return write


def _study_outside_root(tmp: Path) -> None:
    _manifest(tmp, _row(3, path=f"../../{SECRET}"))
    _secret(tmp)
    text = VALID_STUDY.replace(f"['{CLS}']", f"['csv:{tmp / MANIFEST}']")
    (tmp / "study.yaml").write_text(text)


def _run_dir(tmp: Path) -> Path:
    (tmp / "run").mkdir(exist_ok=True)
    return tmp / "run"


def _db_foreign(tmp: Path) -> None:
    con = sqlite3.connect(_run_dir(tmp) / "results.db")
    with con:
        con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        con.executemany("INSERT INTO notes (text) VALUES (?)", [(f"note {i}",) for i in range(50)])
    con.close()


def _garbage(n: int) -> bytes:
    return hashlib.sha256(b"garbage").digest() * (n // 32)


class Shared:
    """What cases copy rather than rebuild: the synthetic datasets and a valid run (results.db).

    Both are made on first use by the code under test, in a folder removed by :meth:`close`.
    """

    def __init__(self, exe: str) -> None:
        self.exe = exe
        self.root = Path(tempfile.mkdtemp(prefix="malformed-shared-"))
        self._synthetic: Path | None = None
        self._run: Path | None = None

    def _radprobe(self, *argv: str) -> None:
        env = case_env(self.root)
        proc = subprocess.run(
            [self.exe, *argv], cwd=self.root, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
        )
        if proc.returncode != 0:
            raise RuntimeError(f"radprobe {' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-2000:]}")

    def synthetic(self) -> Path:
        if self._synthetic is None:
            for spec in (CLS, SEG):
                self._radprobe("data", "check", spec)
            self._synthetic = self.root / "cache" / "synthetic"
        return self._synthetic

    def valid_run(self) -> Path:
        if self._run is None:
            self.synthetic()
            for backbone in (TINY, CNN):  # two backbones, so that compare has a pair
                argv = render(_eval("-p", "knn", "--device", "cpu"), self.root)
                self._radprobe(*[backbone if a == TINY else a for a in argv])
            self._run = self.root / "out"
        return self._run

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _valid_run(tmp: Path, shared: Shared) -> None:
    shutil.copytree(shared.valid_run(), tmp / "run")


def _db_truncated(tmp: Path, shared: Shared) -> None:
    data = (shared.valid_run() / "results.db").read_bytes()
    (_run_dir(tmp) / "results.db").write_bytes(data[: len(data) // 2])


def _plain(fixture: Callable[[Path], Any]) -> Callable[[Path, Shared], None]:
    return lambda tmp, _shared: fixture(tmp)


FIXTURES: dict[str, Callable[[Path, Shared], None]] = {
    "run": _plain(_run_dir),
    "file": _plain(lambda tmp: (tmp / "file.txt").write_text("not a directory\n")),
    "valid_run": _valid_run,
    "run_study": _plain(lambda tmp: (_run_dir(tmp) / "study.yaml").write_text(VALID_STUDY)),
    "db_empty": _plain(lambda tmp: (_run_dir(tmp) / "results.db").write_bytes(b"")),
    "db_garbage": _plain(lambda tmp: (_run_dir(tmp) / "results.db").write_bytes(_garbage(8192))),
    "db_truncated": _db_truncated,
    "db_foreign": _plain(_db_foreign),
    "db_dir": _plain(lambda tmp: (_run_dir(tmp) / "results.db").mkdir()),
    "pth_empty": _plain(lambda tmp: (tmp / "empty.pth").write_bytes(b"")),
    "pth_garbage": _plain(lambda tmp: (tmp / "garbage.pth").write_bytes(_garbage(4096))),
    "weights_dir": _plain(lambda tmp: (tmp / "weights").mkdir()),
    "csv_clean": _plain(_manifest),
    "csv_dotdot": _plain(lambda tmp: (_secret(tmp), _manifest(tmp, _row(3, path=f"../../{SECRET}")))),
    "csv_abs": _plain(lambda tmp: _manifest(tmp, _row(3, path=str(_secret(tmp))))),
    "csv_symlink": _plain(_csv_symlink),
    "csv_nan": _plain(lambda tmp: _manifest(tmp, _row(7, label="NaN"))),
    "csv_empty_label": _plain(lambda tmp: _manifest(tmp, _row(7, label=""))),
    "csv_stray": _plain(lambda tmp: _manifest(tmp, _row(5, label="efusion"))),
    "csv_semicolon": _plain(lambda tmp: _manifest(tmp, delimiter=";")),
    "csv_truncated_png": _plain(_csv_truncated_png),
    "csv_missing_image": _plain(lambda tmp: _manifest(tmp, _row(9, path="img/missing.png"))),
    "csv_empty": _plain(lambda tmp: (_manifest(tmp), (tmp / MANIFEST).write_text(""))),
    "csv_header_only": _plain(
        lambda tmp: (_manifest(tmp), (tmp / MANIFEST).write_text("path,label,patient_id\n"))
    ),
    "folder_clean": _plain(lambda tmp: _folder(tmp, link=False)),
    "folder_symlink": _plain(lambda tmp: _folder(tmp, link=True)),
    "seg_clean": _plain(lambda tmp: _seg(tmp, None)),
    "seg_mask_dotdot": _plain(lambda tmp: _seg(tmp, f"../../{SECRET}")),
    "study_outside_root": _plain(_study_outside_root),
    **{name: _plain(_study_fixture(text)) for name, text in STUDIES.items()},
}


# ---------------------------------------------------------------- running


def radprobe_exe() -> str:
    """The console script beside this interpreter (the one users run), else the one on PATH."""
    exe = shutil.which("radprobe", path=str(Path(sys.executable).parent)) or shutil.which("radprobe")
    if exe is None:
        raise SystemExit("the radprobe console script is not installed (pip install -e .)")
    return exe


def case_env(tmp: Path) -> dict[str, str]:
    """The inherited environment (PYTHONPATH included) with a private cache and no network."""
    return {
        **os.environ,
        "RADPROBE_CACHE": str(tmp / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MPLCONFIGDIR": str(tmp / "cache" / "mpl"),
        "COLUMNS": "200",
        "NO_COLOR": "1",
    }


def placeholders(tmp: Path) -> dict[str, str]:
    return {
        "{tmp}": str(tmp),
        "{out}": str(tmp / "out"),
        "{run}": str(tmp / "run"),
        "{csv}": f"csv:{tmp / MANIFEST}",
        "{seg}": f"csv:{tmp / 'data' / 'seg' / 'seg.csv'}",
    }


def render(argv: tuple[str, ...], tmp: Path) -> list[str]:
    out = []
    for arg in argv:
        for key, value in placeholders(tmp).items():
            arg = arg.replace(key, value)
        out.append(arg)
    return out


def prepare(tmp: Path, c: Case, shared: Shared) -> None:
    """The case's files, and a copy of the synthetic datasets in its own cache."""
    shutil.copytree(shared.synthetic(), tmp / "cache" / "synthetic")
    for name in c.setup:
        FIXTURES[name](tmp, shared)


def snapshot(tmp: Path) -> dict[str, str]:
    """Every path under ``tmp`` but the cache: a file's sha256, a link's target, or "dir"."""
    state: dict[str, str] = {}
    for path in sorted(tmp.rglob("*")):
        rel = path.relative_to(tmp).as_posix()
        if rel == "cache" or rel.startswith("cache/"):
            continue
        if path.is_symlink():
            state[rel] = f"link:{os.readlink(path)}"
        elif path.is_dir():
            state[rel] = "dir"
        else:
            state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def leftovers(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Paths created, changed or removed by the command."""
    out = [f"created {p}" for p in after if p not in before]
    out += [f"changed {p}" for p in after if p in before and before[p] != after[p]]
    out += [f"removed {p}" for p in before if p not in after]
    return out


def read_outside(c: Case, tmp: Path, code: int | None) -> bool:
    """Whether the secret outside the data root was taken in: the command succeeded on it, a results.db
    was written with it, or cached features name it."""
    if not c.secret:
        return False
    if code == 0:
        return True
    dbs = [p for p in tmp.rglob("results.db") if "cache" not in p.relative_to(tmp).parts]
    if any(p.is_file() and p.stat().st_size > 0 for p in dbs):
        return True
    ids = (tmp / "cache" / "features").rglob("sample_ids.json")
    return any(b"secret" in p.read_bytes() or b"link" in p.read_bytes() for p in ids if p.is_file())


def invoke(exe: str, argv: list[str], tmp: Path) -> tuple[int | None, str, str]:
    """``radprobe ARGV`` in ``tmp``: exit code (None on timeout), stdout, stderr."""
    try:
        p = subprocess.run(
            [exe, *argv], cwd=tmp, env=case_env(tmp), capture_output=True, text=True, timeout=TIMEOUT_S
        )
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:

        def text(x: Any) -> str:
            return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")

        return None, text(e.stdout), text(e.stderr) + f"\n(timed out after {TIMEOUT_S} s)"


def run_case(c: Case, shared: Shared, exe: str) -> dict[str, Any]:
    """Run one case in a fresh temporary directory and record what it did."""
    with tempfile.TemporaryDirectory(prefix=f"malformed-{c.id}-") as d:
        tmp = Path(d)
        prepare(tmp, c, shared)
        before = snapshot(tmp)
        start = time.monotonic()
        code, out, err = invoke(exe, render(c.argv, tmp), tmp)
        wall = time.monotonic() - start
        left = leftovers(before, snapshot(tmp))
        outside = read_outside(c, tmp, code)
        lines = [line for line in err.splitlines() if line.strip()]
        first, last = (lines[0], lines[-1]) if lines else ("", "")
    rec: dict[str, Any] = {
        "id": c.id,
        "argv": ["radprobe", *c.argv],
        "setup": list(c.setup),
        "allowed_exit": list(c.codes),
        "exit": code,
        "traceback": "Traceback" in out + err,
        "stderr_lines": len(lines),
        "accepted": code == 0 and 0 not in c.codes,
        "read_outside": outside,
        "leftovers": [x.replace(str(tmp), "{tmp}") for x in left[:10]],
        "first_stderr": first.replace(str(tmp), "{tmp}")[:300],
        "last_stderr": last.replace(str(tmp), "{tmp}")[:300],  # a traceback's exception
        "wall_s": round(wall, 2),
    }
    rec["passed"] = passes(rec)
    return rec


def passes(rec: dict[str, Any]) -> bool:
    return (
        rec["exit"] in rec["allowed_exit"]
        and rec["stderr_lines"] <= 2
        and not rec["traceback"]
        and not rec["leftovers"]
        and not rec["read_outside"]
    )


def summarize(records: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "cases": len(records),
        "passed": sum(r["passed"] for r in records),
        "tracebacks": sum(r["traceback"] for r in records),
        "accepted_silently": sum(r["accepted"] for r in records),
        "read_outside_root": sum(r["read_outside"] for r in records),
        "leftovers": sum(bool(r["leftovers"]) for r in records),
        "over_two_stderr_lines": sum(r["stderr_lines"] > 2 for r in records),
    }


def code_under_test(exe: str) -> dict[str, str]:
    """Which radprobe the executable imports, and the commit of its checkout."""
    py = Path(exe).parent / "python"
    probe = "import radprobe; print(radprobe.__file__)"
    module = subprocess.run(
        [str(py) if py.exists() else sys.executable, "-c", probe], capture_output=True, text=True
    ).stdout.strip()
    git = ["git", "-C", str(Path(module).parent)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "."], capture_output=True, text=True).stdout
    return {"module": module, "commit": commit, "src_dirty": str(bool(dirty.strip())).lower()}


def run_all(out: Path, label: str, only: set[str] | None) -> dict[str, Any]:
    exe = radprobe_exe()
    chosen = [c for c in CONTROLS + CASES if only is None or c.id in only]
    shared = Shared(exe)
    records: dict[str, list[dict[str, Any]]] = {"controls": [], "cases": []}
    try:
        for i, c in enumerate(chosen, 1):
            rec = run_case(c, shared, exe)
            records["controls" if c in CONTROLS else "cases"].append(rec)
            verdict = "pass" if rec["passed"] else "FAIL"
            print(f"[{i}/{len(chosen)}] {c.id}: exit {rec['exit']} {verdict} ({rec['wall_s']} s)", flush=True)
    finally:
        shared.close()
    result = {
        "label": label,
        "executable": exe,
        "code": code_under_test(exe),
        "python": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "summary": summarize(records["cases"]),
        **records,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


# ---------------------------------------------------------------- the before/after table


def summary_line(result: dict[str, Any]) -> str:
    s = result["summary"]
    return (
        f"{result['label']} ({result['code']['commit'][:7]}): {s['cases']} cases, {s['passed']} pass; "
        f"{s['tracebacks']} tracebacks, {s['accepted_silently']} accepted silently, "
        f"{s['read_outside_root']} read outside root, {s['leftovers']} leftovers, "
        f"{s['over_two_stderr_lines']} with more than 2 stderr lines"
    )


def _cell(rec: dict[str, Any] | None) -> str:
    if rec is None:
        return "- | - | -"
    code = "timeout" if rec["exit"] is None else str(rec["exit"])
    return f"{code} | {'yes' if rec['traceback'] else 'no'} | {'**yes**' if rec['accepted'] else 'no'}"


def _notes(rec: dict[str, Any] | None) -> str:
    if rec is None:
        return ""
    notes = ["read outside root"] if rec["read_outside"] else []
    notes += ["leftovers"] if rec["leftovers"] else []
    notes += [f"{rec['stderr_lines']} stderr lines"] if rec["stderr_lines"] > 2 else []
    return ", ".join(notes)


def table(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Markdown: one line per case, before and after, then each side's summary line."""
    b = {r["id"]: r for r in before["cases"]}
    a = {r["id"]: r for r in after["cases"]}
    ids = list(a) + [i for i in b if i not in a]
    lines = [
        "| case | before exit | before traceback | before accepted | after exit | after traceback "
        "| after accepted | after passes | notes (before → after) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i in ids:
        passed = "-" if i not in a else ("yes" if a[i]["passed"] else "**no**")
        notes = f"{_notes(b.get(i)) or '-'} → {_notes(a.get(i)) or '-'}"
        lines.append(f"| {i} | {_cell(b.get(i))} | {_cell(a.get(i))} | {passed} | {notes} |")
    lines += ["", f"- {summary_line(before)}", f"- {summary_line(after)}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run every case against the installed radprobe")
    run.add_argument("--out", type=Path, required=True, help="JSON file to write")
    run.add_argument("--label", default="radprobe", help="name of this side in the table")
    run.add_argument("--only", default=None, help="comma-separated case ids (default: all)")
    tab = sub.add_parser("table", help="markdown before/after table of two runs")
    tab.add_argument("before", type=Path)
    tab.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "run":
        only = None if args.only is None else set(args.only.split(","))
        result = run_all(args.out, args.label, only)
        print(summary_line(result))
        failed = [r["id"] for r in result["controls"] if not r["passed"]]
        if failed:
            print(f"controls failed (fixtures not valid): {', '.join(failed)}", file=sys.stderr)
            return 1
        return 0
    print(table(json.loads(args.before.read_text()), json.loads(args.after.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
