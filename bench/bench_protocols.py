"""Frozen-protocol speed on cached features, each as a ratio against a baseline in the same run.

(a) the 52-head linear grid in one pass vs 52 sequential single-head trainings;
(b) vectorised multi-label BCE vs a per-sample, per-class Python loop (identical loss);
(c) kNN throughput vs this machine's matmul rate for the same similarity product, and peak memory
    at two query-set sizes (each measured in a fresh subprocess).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import torch

from radprobe.protocols import linear
from radprobe.protocols.base import SplitFeatures


def _toy(n: int, d: int, c: int, n_blocks: int = 4, multilabel: bool = False, seed: int = 0) -> SplitFeatures:
    rng = np.random.default_rng(seed)
    blocks = rng.normal(size=(n, n_blocks, 2, d)).astype(np.float32)
    y = (rng.random((n, c)) < 0.2).astype(np.int64) if multilabel else rng.integers(0, c, n)
    return SplitFeatures(blocks[:, -1, 0], y, np.arange(n).astype(str), blocks)


def linear_grid(n: int = 2000, d: int = 384, c: int = 14, iterations: int = 100) -> dict:
    tr = _toy(n, d, c)
    configs = linear.head_grid()
    kw = dict(epochs=0, min_iterations=iterations, batch_size=256, seed=0)
    t0 = time.perf_counter()
    linear.train_heads(tr, "multiclass", c, configs, **kw)
    fused = time.perf_counter() - t0
    t0 = time.perf_counter()
    for cfg in configs:
        linear.train_heads(tr, "multiclass", c, [cfg], **kw)
    sequential = time.perf_counter() - t0
    return {
        "heads": len(configs),
        "n_train": n,
        "dim": d,
        "classes": c,
        "iterations": iterations,
        "one_pass_s": round(fused, 3),
        "sequential_s": round(sequential, 3),
        "speedup": round(sequential / fused, 2),
    }


def _bce_loop(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Per-sample, per-class loss loop, the shape of a naive multi-label training step."""
    total = 0.0
    for i in range(logits.shape[0]):
        for j in range(logits.shape[1]):
            total = total + torch.nn.functional.binary_cross_entropy_with_logits(
                logits[i, j], y[i, j].float()
            )
    return total / logits.numel()


def multilabel_bce(batch: int = 256, classes: int = 14, heads: int = 52, repeats: int = 3) -> dict:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(heads, batch, classes, generator=g)
    y = (torch.rand(batch, classes, generator=g) < 0.2).long()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fused = linear.head_losses(logits, y, "multilabel")
    t_fused = (time.perf_counter() - t0) / repeats
    t0 = time.perf_counter()
    loop = [float(_bce_loop(logits[h], y)) for h in range(heads)]
    t_loop = time.perf_counter() - t0
    return {
        "batch": batch,
        "classes": classes,
        "heads": heads,
        "vectorised_s": round(t_fused, 6),
        "loop_s": round(t_loop, 3),
        "speedup": round(t_loop / t_fused, 1),
        "max_abs_loss_diff": float(np.max(np.abs(fused.numpy() - np.array(loop)))),
    }


_KNN_CHILD = """
import json, resource, sys, time
import numpy as np, torch
from radprobe.protocols.knn import knn_scores
n_bank, n_q, d, c = map(int, sys.argv[1:5])
rng = np.random.default_rng(0)
bank = rng.normal(size=(n_bank, d)).astype(np.float32)
q = rng.normal(size=(n_q, d)).astype(np.float32)
y = rng.integers(0, c, n_bank)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
knn_scores(bank, y, q, ks=(10, 20, 100, 200), task="multiclass", num_classes=c)
t_knn = time.perf_counter() - t0
b, qq = torch.from_numpy(bank), torch.from_numpy(q)
t0 = time.perf_counter()
for s in range(0, n_q, 1024):
    qq[s:s + 1024] @ b.T
t_mm = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"knn_s": t_knn, "matmul_s": t_mm,
                  "peak_rss_mb": peak / 1024, "rss_before_mb": base / 1024}))
"""


def knn(n_bank: int = 20000, d: int = 384, c: int = 14, sizes: tuple[int, ...] = (2000, 20000)) -> dict:
    out = []
    for n_q in sizes:
        p = subprocess.run(
            [sys.executable, "-c", _KNN_CHILD, str(n_bank), str(n_q), str(d), str(c)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(p.stdout)
        out.append(
            {
                "n_bank": n_bank,
                "n_query": n_q,
                "dim": d,
                "knn_queries_per_s": round(n_q / r["knn_s"], 1),
                "matmul_only_queries_per_s": round(n_q / r["matmul_s"], 1),
                "knn_time_over_matmul_time": round(r["knn_s"] / r["matmul_s"], 2),
                "peak_rss_mb": round(r["peak_rss_mb"], 1),
                "peak_minus_inputs_mb": round(r["peak_rss_mb"] - r["rss_before_mb"], 1),
            }
        )
    return {"cases": out, "note": "memory is O(chunk x N_bank): peak should barely grow with N_query"}


def fewshot_fused(
    d: int = 384, c: int = 3, shots: tuple[int, ...] = (1, 2, 4, 8, 16), repeats: int = 5
) -> dict:
    """The 52-head grid on 25 few-shot draws: one fused pass vs one pass per draw."""
    pool = _toy(2000, d, c)
    rng = np.random.default_rng(0)
    draws = [
        pool.subset(np.sort(rng.choice(len(pool), n * c, replace=False)))
        for n in shots
        for _ in range(repeats)
    ]
    configs = linear.head_grid()
    kw = dict(epochs=10, min_iterations=500, batch_size=256)
    t0 = time.perf_counter()
    linear.train_many(draws, "multiclass", c, configs, list(range(len(draws))), **kw)
    fused = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i, tr in enumerate(draws):
        linear.train_heads(tr, "multiclass", c, configs, seed=i, **kw)
    separate = time.perf_counter() - t0
    return {
        "draws": len(draws),
        "heads": len(configs),
        "iterations": 500,
        "fused_s": round(fused, 3),
        "per_draw_s": round(separate, 3),
        "speedup": round(separate / fused, 2),
    }


def bootstrap(n: int = 2000, c: int = 14, n_boot: int = 1000) -> dict:
    """Patient bootstrap of multi-label headline metrics: weighted resamples vs sklearn per resample."""
    from radprobe.metrics.classification import bootstrap_metrics, classification_metrics, resample_index

    rng = np.random.default_rng(0)
    y = (rng.random((n, c)) < 0.2).astype(int)
    s = np.clip(y * 0.3 + rng.random((n, c)), 0, 1)
    groups = np.array([f"p{i // 3}" for i in range(n)])
    t0 = time.perf_counter()
    fast = bootstrap_metrics(y, s, "multilabel", groups, n_boot=n_boot, seed=0)
    t_fast = time.perf_counter() - t0
    ref_rng = np.random.default_rng(0)
    loop_boot = max(1, n_boot // 10)  # the loop is timed on a tenth of the resamples, then scaled
    t0 = time.perf_counter()
    for _ in range(loop_boot):
        idx = resample_index(groups, ref_rng)
        classification_metrics(y[idx], s[idx], "multilabel")
    t_loop = (time.perf_counter() - t0) * n_boot / loop_boot
    return {
        "n": n,
        "labels": c,
        "resamples": n_boot,
        "weighted_s": round(t_fast, 3),
        "sklearn_loop_s_estimated": round(t_loop, 3),
        "speedup": round(t_loop / t_fast, 1),
        "auroc_ci": [fast[0].ci_low, fast[0].ci_high],
    }


def main() -> dict:
    return {
        "linear_grid": linear_grid(),
        "multilabel_bce": multilabel_bce(),
        "knn": knn(),
        "fewshot_fused": fewshot_fused(),
        "bootstrap": bootstrap(),
    }


if __name__ == "__main__":
    from common import write_result

    print(write_result("protocols", main()))
