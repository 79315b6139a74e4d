"""What each trained protocol costs per training step: throughput, peak memory, trainable parameters.

The same model (DINOv2 ViT-S/14 architecture, random init: no download), input size and batch for
finetune, finetune with gradient checkpointing, partial (last 2 blocks), LoRA, DoRA (rank 8 on qkv,
proj, fc1, fc2), BitFit and deep VPT (10 tokens). Each method runs in a fresh subprocess, so its peak
resident memory (or CUDA max allocated) is its own; the step is the real one of the training loop
(forward, loss, backward, clip, AdamW step) on a fixed random batch, with data loading left out.

Memory is reported three ways: the peak (CUDA max allocated, or peak RSS on CPU, which is noisy),
what one forward pass holds for backward (exact, weights excluded: saved activations, the inputs
gradient checkpointing recomputes from, autocast's casts; ``radprobe.finetune.memory``), and the
gradients plus AdamW moments the trainable parameters need (3 x fp32 each).
"""

from __future__ import annotations

import json
import subprocess
import sys

_CHILD = """
import contextlib, json, sys, time
import torch
from radprobe.backbones import create_backbone
from radprobe.finetune import build_model, parse_options
from radprobe.finetune.heads import ClassificationHead
from radprobe.core.runtime import peak_memory_mb
from radprobe.finetune.memory import held_for_backward

protocol, extra, res, batch, steps, warmup, device, threads, model_name = sys.argv[1:10]
torch.set_num_threads(int(threads))
res, batch, steps, warmup = int(res), int(batch), int(steps), int(warmup)
dev = torch.device(device)
torch.manual_seed(0)
bb = create_backbone(model_name, pretrained=False, resolution=res)
opts = parse_options(protocol, json.loads(extra), batch)
head = ClassificationHead(bb.info.embed_dim, 14, "multilabel", "cls")
built = build_model(protocol, bb, head, opts)
model = built.model.to(dev).train()
opt = torch.optim.AdamW(built.groups)
params = [p for g in opt.param_groups for p in g["params"]]
x = torch.randn(batch, 3, res, res, device=dev)
y = (torch.rand(batch, 14, device=dev) < 0.2).float()
if dev.type == "cuda":
    torch.cuda.reset_peak_memory_stats(dev)
rss_before = peak_memory_mb(dev)

def amp():
    if dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()

def step():
    with amp():
        logits = model(x)
    loss = model.head.loss(logits, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss)

for _ in range(warmup):
    step()
if dev.type == "cuda":
    torch.cuda.synchronize(dev)
t0 = time.perf_counter()
for _ in range(steps):
    step()
if dev.type == "cuda":
    torch.cuda.synchronize(dev)
dt = time.perf_counter() - t0
peak = peak_memory_mb(dev)
# bytes the forward holds for backward: saved tensors, checkpointed inputs (exact, unlike RSS)
saved_mb = held_for_backward(model, x, amp) / 2**20
print(json.dumps({
    "params": built.params,
    "trainable_params": built.trainable_params,
    "step_s": dt / steps,
    "peak_mem_mb": peak,
    "mem_before_training_mb": rss_before,
    "saved_for_backward_mb": saved_mb,
}))
"""

CASES: list[tuple[str, str, dict]] = [
    ("finetune", "finetune", {}),
    ("finetune+grad_checkpointing", "finetune", {"grad_checkpointing": True}),
    ("partial (last 2 blocks)", "partial", {"blocks": 2}),
    ("lora r8", "lora", {"rank": 8}),
    ("dora r8", "dora", {"rank": 8}),
    ("bitfit", "bitfit", {}),
    ("vpt deep 10 tokens", "vpt", {"tokens": 10}),
]


def run_case(
    protocol: str,
    extra: dict,
    res: int,
    batch: int,
    steps: int,
    warmup: int,
    device: str,
    threads: int,
    model: str = "dinov2-s",
) -> dict:
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            protocol,
            json.dumps(extra),
            str(res),
            str(batch),
            str(steps),
            str(warmup),
            device,
            str(threads),
            model,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(
    res: int = 112,
    batch: int = 8,
    steps: int = 4,
    warmup: int = 1,
    device: str = "cpu",
    threads: int = 1,
    model: str = "dinov2-s",
) -> dict:
    """``threads``: torch intra-op threads per child; 1 keeps timings stable on a shared machine.
    On CUDA the step runs under bf16 autocast, as the training loop does."""
    rows = []
    for name, protocol, extra in CASES:
        r = run_case(protocol, extra, res, batch, steps, warmup, device, threads, model)
        rows.append(
            {
                "method": name,
                "trainable_params": r["trainable_params"],
                "trainable_pct": round(100 * r["trainable_params"] / r["params"], 3),
                "train_imgs_per_s": round(batch / r["step_s"], 2),
                "step_s": round(r["step_s"], 4),
                "peak_mem_mb": round(r["peak_mem_mb"], 1),
                "peak_over_model_mb": round(r["peak_mem_mb"] - r["mem_before_training_mb"], 1),
                # what the method holds besides the weights: activations saved for backward, and
                # gradients plus AdamW's two moments (fp32) of the trainable parameters
                "saved_for_backward_mb": round(r["saved_for_backward_mb"], 1),
                "grads_and_adam_mb": round(3 * 4 * r["trainable_params"] / 2**20, 1),
            }
        )
    base = rows[0]
    for r in rows:
        r["speed_vs_finetune"] = round(r["train_imgs_per_s"] / base["train_imgs_per_s"], 2)
        r["peak_over_model_vs_finetune"] = (
            round(r["peak_over_model_mb"] / base["peak_over_model_mb"], 2)
            if base["peak_over_model_mb"] > 0
            else None
        )
    return {
        "model": f"{model} random init, 14-label multilabel head",
        "precision": "bf16 autocast" if device.startswith("cuda") else "fp32",
        "resolution": res,
        "batch": batch,
        "timed_steps": steps,
        "device": device,
        "torch_threads": threads,
        "results": rows,
        "note": "peak_mem_mb: CUDA max allocated, or the process's peak RSS on CPU; peak_over_model_mb "
        "subtracts the memory held once the model was built (activations, gradients, AdamW state)",
    }


if __name__ == "__main__":
    from common import write_result

    if "--gpu" in sys.argv:  # a lent GPU: ViT-B/14 at 224 px, bf16
        print(write_result("finetune_gpu", main(224, 64, 20, 3, "cuda", 8, "dinov2-b")))
    else:
        print(write_result("finetune", main()))
