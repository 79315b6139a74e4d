"""What each trained protocol makes trainable, and the optimizer groups it trains them in.

============ ==================================================================================
finetune     every backbone weight; layer-wise lr decay from the last block down to the embeddings
lora / dora  low-rank adapters (HF peft) on the blocks' Linear layers; base weights frozen
bitfit       only bias terms (all of them: attention, MLP, norms, patch embedding)
vpt          prompt tokens (shallow or deep) on a frozen timm ViT
partial      the last k blocks (CNNs: stages) and the final norm
============ ==================================================================================

The head always trains, at ``lr`` (a grid of heads: each at its own lr); the backbone side at
``backbone_lr``. LoRA's ``lora_bias`` also trains the biases peft's ``LoraConfig(bias=...)`` names.
``check_method`` validates a protocol's options against a backbone without changing it;
``build_model`` then builds the model.
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from radprobe.backbones.base import BackboneOutput
from radprobe.errors import OptionError, RadprobeError
from radprobe.finetune.anatomy import _BLOCK_RE, anatomy, inner_model
from radprobe.finetune.heads import Head
from radprobe.finetune.options import (
    OPTION_TYPES,
    DoraOptions,
    FinetuneOptions,
    LoraOptions,
    PartialOptions,
    TrainOptions,
    VptOptions,
)
from radprobe.finetune.vpt import PromptedViT, supports_vpt

# Parameters that are embeddings or gates rather than weights: no weight decay (like 1-D params).
_NO_DECAY = ("cls_token", "reg_token", "pos_embed", "prompts", "lora_magnitude_vector")


class TrainModel(nn.Module):
    """Encoder (the backbone, possibly adapted or prompted) followed by a head.

    ``frozen_encoder``: the encoder stays in eval mode while the head trains (a refit on a trained
    backbone: its dropout, e.g. LoRA's, is off, as in the paper's refit).
    """

    def __init__(self, encoder: nn.Module, head: Head, frozen_encoder: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.frozen_encoder = frozen_encoder

    def features(self, x: torch.Tensor) -> BackboneOutput:
        return self.encoder(x, n_blocks=self.head.n_blocks, grid_layers=self.head.grid_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def train(self, mode: bool = True) -> TrainModel:
        super().train(mode)
        if self.frozen_encoder:
            self.encoder.eval()
        # A frozen BatchNorm keeps its running statistics: they are part of the pretrained weights,
        # and a method that does not train a norm's scale must not silently re-estimate it.
        for m in self.modules():
            if isinstance(m, _BatchNorm):
                m.train(mode and m.weight is not None and m.weight.requires_grad)
        return self


@dataclass
class Built:
    """A model ready to train: optimizer parameter groups and what the method resolved."""

    model: TrainModel
    groups: list[dict[str, Any]]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def _no_decay(name: str, p: nn.Parameter) -> bool:
    return p.ndim <= 1 or any(t in name for t in _NO_DECAY)


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def _in_block(name: str) -> bool:
    return _BLOCK_RE.search(name + ".") is not None


def lora_targets(backbone: nn.Module, targets: list[str] | None) -> list[str]:
    """Full module names (relative to the backbone's network) that LoRA adapts.

    Default: every Linear layer inside the transformer blocks (timm ViTs: attention qkv and proj, MLP
    fc1 and fc2). Given names match a module's full name or its dotted suffix; Linear and Conv2d
    modules qualify.
    """
    model = inner_model(backbone)
    if targets is None:
        found = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and _in_block(n)]
        if not found:
            raise RadprobeError(
                f"lora: backbone {backbone.info.name} has no Linear layers in its blocks; "  # type: ignore[attr-defined]
                "name the modules to adapt with --set lora.targets=NAME,..."
            )
        return found
    kinds = (nn.Linear, nn.Conv2d)
    found = []
    for t in targets:
        hits = [
            n for n, m in model.named_modules() if isinstance(m, kinds) and (n == t or n.endswith("." + t))
        ]
        if not hits:
            raise OptionError(
                "--set",
                f"lora.targets: no Linear or Conv2d module of {backbone.info.name} "  # type: ignore[attr-defined]
                f"is named {t!r} (e.g. qkv, proj, fc1, fc2 on timm ViTs)",
            )
        found += [h for h in hits if h not in found]
    return found


def _supports_grad_checkpointing(encoder: nn.Module) -> bool:
    model = encoder if isinstance(encoder, PromptedViT) else getattr(encoder, "model", None)
    return model is not None and (
        hasattr(model, "set_grad_checkpointing") or hasattr(model, "gradient_checkpointing_enable")
    )


def _enable_grad_checkpointing(encoder: nn.Module) -> None:
    model = encoder if isinstance(encoder, PromptedViT) else encoder.model
    if hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)
    else:
        model.gradient_checkpointing_enable()


def check_method(protocol: str, backbone: nn.Module, opts: TrainOptions) -> dict[str, Any]:
    """Validate ``opts`` of ``protocol`` against ``backbone`` (left unchanged); returns resolved facts."""
    name = backbone.info.name  # type: ignore[attr-defined]
    if protocol not in OPTION_TYPES:
        raise OptionError(
            "--protocol",
            f"{protocol}: unknown trained protocol; expected one of {', '.join(OPTION_TYPES)}",
            setting="protocols",
        )
    if opts.grad_checkpointing and not _supports_grad_checkpointing(backbone):
        raise OptionError("--set", f"{protocol}.grad_checkpointing=true: backbone {name} does not support it")
    details: dict[str, Any] = {}
    if protocol in ("finetune", "partial"):
        a = anatomy(backbone)
        details["depth"] = a.depth
        if isinstance(opts, PartialOptions) and opts.blocks > a.depth:
            raise OptionError(
                "--set",
                f"partial.blocks={opts.blocks}: backbone {name} has only {a.depth} "
                f"{'blocks' if a.is_vit else 'stages'}",
            )
    elif protocol in ("lora", "dora"):
        assert isinstance(opts, LoraOptions)
        try:
            import peft  # noqa: F401
        except ImportError:
            raise OptionError(
                "--protocol", f"{protocol}: needs the peft package (pip install peft)", setting="protocols"
            ) from None
        details["targets"] = lora_targets(backbone, opts.targets)
    elif protocol == "vpt" and not supports_vpt(backbone):
        raise OptionError(
            "--protocol", f"vpt: needs a timm ViT backbone; {name} is not one", setting="protocols"
        )
    return details


def build_model(
    protocol: str, backbone: nn.Module, head: Head, opts: TrainOptions, *, unused: Collection[str] = ()
) -> Built:
    """Adapt ``backbone`` (in place) for ``protocol`` and pair it with ``head``.

    ``unused`` names parameters (of the returned model) that the forward pass never reaches, as found
    by :func:`unreached_parameters`; they stay frozen so that trainable counts are honest.
    """
    details = check_method(protocol, backbone, opts)
    blr = float(opts.backbone_lr or 0.0)
    encoder: nn.Module = backbone
    _freeze(backbone)
    level_lr: dict[str, tuple[str, float]] = {}  # finetune: parameter -> (level tag, its lr)
    if protocol == "finetune":
        assert isinstance(opts, FinetuneOptions)
        a = anatomy(backbone)
        for n, p in a.model.named_parameters():
            p.requires_grad_(True)
            lvl = a.levels[n]
            level_lr["encoder.model." + n] = (f"level{lvl}", blr * opts.layer_decay ** (a.depth + 1 - lvl))
        details["layer_lrs"] = {tag: v for tag, v in sorted(set(level_lr.values()))}
    elif protocol == "partial":
        assert isinstance(opts, PartialOptions)
        a = anatomy(backbone)
        keep = a.blocks_from(opts.blocks)
        for n, p in a.model.named_parameters():
            p.requires_grad_(n in keep)
    elif protocol == "bitfit":
        for n, p in backbone.named_parameters():
            p.requires_grad_(n.endswith("bias"))
    elif protocol in ("lora", "dora"):
        assert isinstance(opts, LoraOptions)
        from peft import LoraConfig, inject_adapter_in_model

        config = LoraConfig(
            r=opts.rank,
            lora_alpha=opts.alpha,
            lora_dropout=opts.dropout,
            target_modules=details["targets"],
            use_dora=protocol == "dora",
            bias=opts.lora_bias,
        )
        model = inject_adapter_in_model(config, inner_model(backbone))
        if isinstance(opts, DoraOptions) and opts.recompute:
            from radprobe.finetune.dora import recompute_dora

            details["dora_recomputed"] = recompute_dora(model)
        for n, p in model.named_parameters():
            # adapters (A, B and DoRA's magnitude), and the biases peft's ``bias`` names
            p.requires_grad_("lora_" in n or _lora_bias_trains(n, opts.lora_bias))
    elif protocol == "vpt":
        assert isinstance(opts, VptOptions)
        encoder = PromptedViT(backbone, opts.tokens, opts.deep, opts.prompt_dropout)  # type: ignore[arg-type]
    if opts.grad_checkpointing:
        _enable_grad_checkpointing(encoder)
    model = TrainModel(encoder, head)
    for n, p in model.named_parameters():
        if n in unused:
            p.requires_grad_(False)
    return Built(model, param_groups(model, opts, protocol, level_lr), details)


def _lora_bias_trains(name: str, bias: str) -> bool:
    """Whether peft's LoraConfig ``bias`` makes parameter ``name`` trainable: lora_only, the biases
    of the adapted layers (peft keeps them as ``<module>.base_layer.bias``); all, every bias."""
    if bias == "lora_only":
        return name.endswith(".base_layer.bias")
    return bias == "all" and "bias" in name  # peft's own test for bias="all"


def param_groups(
    model: TrainModel, opts: TrainOptions, tag: str, level_lr: dict[str, tuple[str, float]] | None = None
) -> list[dict[str, Any]]:
    """Optimizer groups of ``model``'s trainable parameters: (tag, lr, decay or not). The head at
    ``lr`` (or its own per-head lr), the backbone side at ``backbone_lr`` (finetune: per level)."""
    blr = float(opts.backbone_lr or 0.0)
    level_lr = level_lr or {}
    groups: dict[tuple[str, float, bool], dict[str, Any]] = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if n.startswith("head."):
            own = model.head.lr_of(n[len("head.") :])
            tag_n, lr = "head", opts.lr if own is None else own
        else:
            tag_n, lr = level_lr.get(n, (tag, blr))
        decay = not _no_decay(n, p)
        g = groups.setdefault(
            (tag_n, lr, decay),
            {
                "name": f"{tag_n}/{'decay' if decay else 'no_decay'}",
                "params": [],
                "lr": lr,
                "weight_decay": opts.weight_decay if decay else 0.0,
            },
        )
        g["params"].append(p)
    return list(groups.values())


def unreached_parameters(
    protocol: str, backbone: nn.Module, head: Head, opts: TrainOptions
) -> tuple[list[str], str | None]:
    """Trainable parameters that one forward/backward pass leaves without a gradient.

    Built on a copy (``backbone`` is unchanged) and run on one random image in eval mode. Returns the
    names, and an error line when the method's own parameters (adapters, prompts) are among them: a
    backbone whose forward bypasses them would train nothing while reporting trainable adapters —
    the seed study's LoRA bug. Unused *base* parameters (e.g. a pooling head the features never
    pass through) are merely returned, to be kept frozen.
    """
    with torch.random.fork_rng(devices=[]):
        built = build_model(protocol, copy.deepcopy(backbone), copy.deepcopy(head), opts)
        model = built.model.eval()
        r = backbone.preprocess.resolution  # type: ignore[attr-defined]
        x = torch.randn(1, 3, r, r, generator=torch.Generator().manual_seed(0))
        model(x).float().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    own = [n for n in missing if "lora_" in n or n == "encoder.prompts"]
    error = None
    if own:
        name = backbone.info.name  # type: ignore[attr-defined]
        error = (
            f"--protocol {protocol}: {len(own)} of the method's parameters get no gradient on backbone "
            f"{name} (e.g. {own[0]}); its forward pass bypasses them"
        )
    return missing, error
