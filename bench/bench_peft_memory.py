"""Where LoRA's and DoRA's training memory goes, against full fine-tuning in the same run.

Each case is a fresh subprocess running bench_finetune's real training step (forward, loss,
backward, clip, AdamW) on a fixed random batch of the DINOv2 ViT-S/14 architecture (random init).
Per case: what one forward holds for backward (exact), gradients plus AdamW moments, peak memory
(RSS on CPU: noisy; CUDA max allocated on a GPU) and step time, each also as a ratio to finetune.

The cases separate the causes: LoRA's dropout (peft saves a mask and the dropped copy of every
adapted layer's input; at 0 it uses Identity), DoRA's magnitude step (two output-sized tensors per
adapted layer unless recomputed: ``dora.recompute``, the default; ``recompute=false`` is peft as
is), and gradient checkpointing of the blocks, which PEFT methods take like finetune.
"""

from __future__ import annotations

import sys

from bench_finetune import run_case

CASES: list[tuple[str, str, dict]] = [
    ("finetune", "finetune", {}),
    ("finetune+grad_checkpointing", "finetune", {"grad_checkpointing": True}),
    ("lora r8 (dropout 0.1)", "lora", {"rank": 8}),
    ("lora r8 dropout 0", "lora", {"rank": 8, "dropout": 0.0}),
    ("lora r8+grad_checkpointing", "lora", {"rank": 8, "grad_checkpointing": True}),
    ("dora r8 as peft (recompute=false)", "dora", {"rank": 8, "recompute": False}),
    ("dora r8 (recompute, default)", "dora", {"rank": 8}),
    ("dora r8 dropout 0 as peft", "dora", {"rank": 8, "dropout": 0.0, "recompute": False}),
    ("dora r8 dropout 0 recompute", "dora", {"rank": 8, "dropout": 0.0}),
    ("dora r8+grad_checkpointing", "dora", {"rank": 8, "grad_checkpointing": True}),
]


def main(
    res: int = 112,
    batch: int = 8,
    steps: int = 3,
    warmup: int = 1,
    device: str = "cpu",
    threads: int = 1,
    model: str = "dinov2-s",
) -> dict:
    """One row per case; ratios against the finetune row of this run."""
    rows = []
    for name, protocol, extra in CASES:
        r = run_case(protocol, extra, res, batch, steps, warmup, device, threads, model)
        rows.append(
            {
                "method": name,
                "options": extra,
                "trainable_params": r["trainable_params"],
                "held_for_backward_mb": round(r["saved_for_backward_mb"], 2),
                "grads_and_adam_mb": round(3 * 4 * r["trainable_params"] / 2**20, 2),
                "peak_mem_mb": round(r["peak_mem_mb"], 1),
                "peak_over_model_mb": round(r["peak_mem_mb"] - r["mem_before_training_mb"], 1),
                "step_s": round(r["step_s"], 4),
            }
        )
    base = rows[0]
    for r in rows:
        for k in ("held_for_backward_mb", "peak_over_model_mb", "step_s"):
            r[f"{k.removesuffix('_mb')}_vs_finetune"] = round(r[k] / base[k], 3) if base[k] > 0 else None
        own = r["held_for_backward_mb"] + r["grads_and_adam_mb"]
        r["held_plus_optimizer_vs_finetune"] = round(
            own / (base["held_for_backward_mb"] + base["grads_and_adam_mb"]), 3
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
        "note": "held_for_backward_mb: exact bytes one forward leaves alive for backward (saved "
        "activations, checkpointed inputs, autocast casts), weights excluded; peak_mem_mb: CUDA max "
        "allocated, or peak RSS on CPU (noisy); step_s and peak on CPU vary with the machine's load",
    }


if __name__ == "__main__":
    from common import write_result

    if "--gpu" in sys.argv:  # a lent GPU: ViT-B/14 at 224 px, bf16, as bench_finetune --gpu
        print(write_result("peft_memory_gpu", main(224, 64, 6, 1, "cuda", 8, "dinov2-b")))
    else:
        print(write_result("peft_memory", main()))
