"""Hugging Face ``transformers`` ViT-style vision models (RAD-DINO, ViT-MSN, any ``hf:<repo or folder>``).

``transformers`` is the optional ``hf`` extra and is imported only when such a backbone is built.
Token layout is inferred per batch: the tokens beyond the h*w patch grid are the prefix (class
token first, then registers), so registers never enter the patch mean or the grid.
"""

from __future__ import annotations

import inspect
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from radprobe.backbones.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    BackboneInfo,
    BackboneOutput,
    Preprocess,
)
from radprobe.backbones.registry import (
    RANDOM_DIGEST,
    BackboneEntry,
    BuildOptions,
    count_params,
    register,
    register_prefix,
    resolve_resolution,
    seeded,
)
from radprobe.backbones.timm_vit import block_indices
from radprobe.backbones.weights import (
    HEAD_PREFIXES,
    PARTIAL_HINT,
    FitReport,
    first_line,
    hub_access,
    hub_error,
    read_state_dict,
    weights_file,
)
from radprobe.errors import RadprobeError, WeightsError
from radprobe.utils import file_sha256

FINAL_NORMS = ("layernorm", "post_layernorm", "norm", "layer_norm")


def import_transformers(backbone: str) -> Any:
    """The ``transformers`` module, or a one-line error naming the extra to install."""
    try:
        import transformers
    except ImportError:
        raise RadprobeError(
            f"backbone {backbone} needs the 'hf' extra: pip install 'radprobe[hf]' (transformers)"
        ) from None
    return transformers


@contextmanager
def quiet(transformers: Any) -> Iterator[None]:
    """Silence transformers' load reports and progress bars; radprobe reports problems itself."""
    logging = transformers.utils.logging
    level = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def vision_part(model: nn.Module) -> nn.Module:
    """The image tower of dual-encoder models (CLIP-like), else the model itself."""
    return getattr(model, "vision_model", model)


class HFViT(Backbone):
    """A transformers ViT-style model; blocks and grid come from ``output_hidden_states``.

    Every hidden state is passed through the model's final layer norm, so the last block's class
    token equals ``last_hidden_state[:, 0]`` for DINOv2/ViT-style models; with ``final_norm=False``
    hidden states are taken as the blocks leave them.
    """

    def __init__(
        self, model: nn.Module, info: BackboneInfo, preprocess: Preprocess, final_norm: bool = True
    ) -> None:
        super().__init__()
        self.model = model
        self.info = info
        self.preprocess = preprocess
        # A name, not a module attribute, so the norm is not registered (and saved) twice.
        self.norm_name = next(
            (n for n in FINAL_NORMS if isinstance(getattr(model, n, None), nn.Module)), None
        )
        if not final_norm:
            self.norm_name = None
        # ViT/MSN only interpolate position embeddings when asked; DINOv2 always does.
        self._kw = (
            {"interpolate_pos_encoding": True}
            if "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
            else {}
        )

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, n_blocks: int = 1, grid_layers: tuple[int, ...] = ()
    ) -> BackboneOutput:
        depth = self.info.num_blocks
        last, grid_idx = block_indices(self.info.name, depth, n_blocks, tuple(grid_layers))
        wanted = sorted(set(last) | set(grid_idx.values()))
        hidden = self.model(pixel_values=x, output_hidden_states=True, **self._kw).hidden_states
        if hidden is None or len(hidden) != depth + 1:
            raise RadprobeError(f"{self.info.name} did not return {depth} + 1 hidden states")
        p = self.info.patch_size or 1
        h, w = x.shape[-2] // p, x.shape[-1] // p
        maps: dict[int, torch.Tensor] = {}
        cls_tokens: dict[int, torch.Tensor] = {}
        norm = getattr(self.model, self.norm_name) if self.norm_name else nn.Identity()
        for i in wanted:
            tokens = norm(hidden[i + 1])  # hidden[0] is the embedding output
            n_prefix = tokens.shape[1] - h * w
            if n_prefix < 0:
                raise RadprobeError(f"{self.info.name} returned {tokens.shape[1]} tokens for a {h}x{w} grid")
            patches = tokens[:, n_prefix:]
            maps[i] = patches.transpose(1, 2).reshape(x.shape[0], -1, h, w)
            cls_tokens[i] = tokens[:, 0] if n_prefix else patches.mean(dim=1)
        blocks = torch.stack(
            [torch.stack([cls_tokens[i], maps[i].mean(dim=(2, 3))], dim=1) for i in last], dim=1
        )
        return BackboneOutput(
            cls=blocks[:, -1, 0],
            pooled=blocks[:, -1, 1],
            blocks=blocks,
            grid={layer: maps[i] for layer, i in grid_idx.items()},
        )


def model_class(transformers: Any, entry: BackboneEntry) -> Any:
    """The transformers class to build: ``options["model_class"]`` (e.g. ViTModel for an MAE
    checkpoint, which AutoModel would build as a masking ViTMAEModel), else AutoModel."""
    return getattr(transformers, entry.options.get("model_class", "AutoModel"))


def _from_config(transformers: Any, entry: BackboneEntry, config: Any) -> nn.Module:
    cls = model_class(transformers, entry)
    kwargs = entry.options.get("model_kwargs", {})
    return cls.from_config(config, **kwargs) if cls is transformers.AutoModel else cls(config, **kwargs)


def _config(transformers: Any, entry: BackboneEntry) -> Any:
    """The model config: built in for known repos, else from the folder or the hub cache."""
    known = entry.options.get("config")
    if known is not None:
        known = dict(known)
        return transformers.AutoConfig.for_model(known.pop("model_type"), **known)
    repo = entry.options["repo"]
    try:
        with hub_access():
            return transformers.AutoConfig.from_pretrained(repo)
    except Exception as exc:
        raise hub_error(entry.name, f"config of hf {repo}; pass an HF folder as --weights", exc) from None


def _report_from_hf(info: dict[str, Any], dropped: tuple[str, ...] = ()) -> FitReport:
    """``dropped``: prefixes of checkpoint parts the backbone leaves out on purpose (an MAE decoder)."""
    report = FitReport(transform="as-is")  # transformers' own key conversions are not tracked
    report.missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    heads = HEAD_PREFIXES + dropped
    report.dropped_heads = [k for k in unexpected if k.startswith(heads)]
    report.unexpected = [k for k in unexpected if not k.startswith(heads)]
    report.mismatched = [
        (str(m[0]), tuple(m[1]), tuple(m[2]))
        if isinstance(m, tuple | list) and len(m) == 3
        else (str(m), (), ())
        for m in sorted(info.get("mismatched_keys") or [], key=str)
    ]
    return report


def _load_pretrained(
    transformers: Any, where: str, entry: BackboneEntry, opts: BuildOptions, label: str, hub: bool = False
) -> tuple[nn.Module, FitReport]:
    """``from_pretrained`` on a folder (or hub repo when ``hub``), with radprobe's strictness
    instead of transformers' silent re-initialisation of missing or misshapen weights."""
    kwargs: dict[str, Any] = {"output_loading_info": True, **entry.options.get("model_kwargs", {})}
    cls = model_class(transformers, entry)
    with seeded(), quiet(transformers):  # seeded: keys allowed to be missing get a reproducible init
        try:
            with hub_access() if hub else nullcontext():
                model, info = cls.from_pretrained(where, **kwargs)
        except Exception as exc:
            if "mismatch" not in str(exc).lower():
                if hub:
                    raise hub_error(entry.name, f"hf {where}", exc) from None
                raise WeightsError(
                    f"could not load HF weights {label} for {entry.name}: {first_line(exc)}"
                ) from None
            # Reload tolerantly only to learn which keys mismatch; strictness is applied below.
            model, info = cls.from_pretrained(where, ignore_mismatched_sizes=True, **kwargs)
    report = _report_from_hf(info, tuple(entry.options.get("drop_prefixes", ())))
    if not report.ok and not opts.allow_partial_weights:
        raise WeightsError(f"weights {label} do not fit {entry.name}: {report.summary()}; {PARTIAL_HINT}")
    return model, report


def _from_file(
    transformers: Any, file: Path, entry: BackboneEntry, opts: BuildOptions
) -> tuple[nn.Module, FitReport]:
    """Load a bare state-dict file by pairing it with the entry's config in a temporary HF folder,
    so transformers' own key conversions (old -> new layouts) still apply."""
    from safetensors.torch import save_file

    sd = read_state_dict(file)
    config = _config(transformers, entry)
    with tempfile.TemporaryDirectory(prefix="radprobe-hf-") as tmp:
        config.save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(Path(tmp) / "model.safetensors"))
        return _load_pretrained(transformers, tmp, entry, opts, label=str(file))


def _processor_config(repo: str, local: Path | None, download: bool) -> dict[str, Any] | None:
    """The image-processor settings shipped with the weights: from the folder, the hub cache, or
    (only when the weights themselves came from the hub) the hub."""
    path: Path | None = None
    if local is not None:
        path = local / "preprocessor_config.json"
    else:
        try:
            from huggingface_hub import hf_hub_download, try_to_load_from_cache

            cached = try_to_load_from_cache(repo, "preprocessor_config.json")
            if isinstance(cached, str):
                path = Path(cached)
            elif download:
                path = Path(hf_hub_download(repo, "preprocessor_config.json"))
        except Exception:  # no processor file is fine: documented defaults apply
            return None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _processor_size(proc: dict[str, Any]) -> int | None:
    for key in ("crop_size", "size") if proc.get("do_center_crop", True) else ("size",):
        value = proc.get(key)
        if isinstance(value, int):
            return value
        if isinstance(value, dict):
            for k in ("height", "shortest_edge"):
                if isinstance(value.get(k), int):
                    return value[k]
    return None


def _wrap(
    model: nn.Module,
    entry: BackboneEntry,
    opts: BuildOptions,
    *,
    source: str,
    digest: str,
    processor_dir: Path | None,
    report: FitReport | None,
) -> HFViT:
    model = vision_part(model).float()
    config = model.config
    patch = getattr(config, "patch_size", None)
    patch = patch[0] if isinstance(patch, list | tuple) else patch
    if not isinstance(patch, int) or not hasattr(config, "hidden_size"):
        raise RadprobeError(f"{entry.name} is not a ViT-style model (config has no patch_size/hidden_size)")
    image_size = getattr(config, "image_size", 224)
    native = int(image_size[0] if isinstance(image_size, list | tuple) else image_size)

    defaults = entry.options.get("preprocess", {})
    mean, std = defaults.get("mean", IMAGENET_MEAN), defaults.get("std", IMAGENET_STD)
    size = defaults.get("resolution", native)
    # "fixed": the entry's preprocessing is what a study used, whatever the weights' processor says
    fixed = bool(defaults.get("fixed"))
    proc = None
    if not opts.meta and not fixed:
        proc = _processor_config(entry.options["repo"], processor_dir, opts.from_hub)
    if proc:
        mean = tuple(proc.get("image_mean", mean))
        std = tuple(proc.get("image_std", std))
        size = _processor_size(proc) or size
    preprocess = Preprocess(
        mean=tuple(mean),  # type: ignore[arg-type]
        std=tuple(std),  # type: ignore[arg-type]
        resolution=resolve_resolution(entry.name, size, patch, opts.resolution),
        patch_size=patch,
        minmax=bool(defaults.get("minmax", False)),
        antialias=bool(defaults.get("antialias", True)),
        clamp=bool(defaults.get("clamp", True)),
    )
    extra: dict[str, Any] = {"num_register_tokens": int(getattr(config, "num_register_tokens", 0) or 0)}
    if report is not None:
        extra.update(report.provenance())
    info = BackboneInfo(
        name=entry.name,
        family=entry.family,
        arch=str(getattr(config, "model_type", type(model).__name__)),
        source=source,
        embed_dim=int(config.hidden_size),
        patch_size=patch,
        native_resolution=native,
        params=count_params(model),
        num_blocks=int(config.num_hidden_layers),
        weights_digest=digest,
        extra=extra,
    )
    return HFViT(model, info, preprocess, final_norm=entry.options.get("final_norm", True))


def _folder_digest(folder: Path) -> str:
    return file_sha256(weights_file(folder))


def build_hf(entry: BackboneEntry, opts: BuildOptions) -> HFViT:
    """Builder for HF entries: ``options["repo"]`` is a hub id or a local HF folder."""
    transformers = import_transformers(entry.name)
    repo = entry.options["repo"]
    local = Path(repo).expanduser() if Path(repo).expanduser().is_dir() else None
    report: FitReport | None = None
    processor_dir = local
    if opts.meta:
        with quiet(transformers):
            model = _from_config(transformers, entry, _config(transformers, entry))
        source, digest = "random-init", RANDOM_DIGEST
    elif opts.weights is not None:
        if opts.weights.is_dir():
            model, report = _load_pretrained(transformers, str(opts.weights), entry, opts, str(opts.weights))
            processor_dir, digest = opts.weights, _folder_digest(opts.weights)
        else:
            model, report = _from_file(transformers, opts.weights, entry, opts)
            digest = file_sha256(opts.weights)
        source = f"file:{opts.weights}"
    elif opts.pretrained and local is not None:
        model, report = _load_pretrained(transformers, str(local), entry, opts, label=str(local))
        source, digest = f"file:{local}", _folder_digest(local)
    elif opts.pretrained:
        model, report = _load_pretrained(transformers, repo, entry, opts, label=f"hf:{repo}", hub=True)
        commit = getattr(model.config, "_commit_hash", None)
        source = f"hf:{repo}"
        digest = f"{source}@{commit}" if commit else source
    else:
        config = _config(transformers, entry)
        with seeded(), quiet(transformers):
            model = _from_config(transformers, entry, config)
        source, digest = "random-init", RANDOM_DIGEST
    return _wrap(model, entry, opts, source=source, digest=digest, processor_dir=processor_dir, report=report)


def _resolve_hf(name: str, rest: str) -> BackboneEntry:
    return BackboneEntry(
        name=name,
        family="hf",
        arch="transformers AutoModel",
        source=f"hf:{rest}",
        description=f"Hugging Face model {rest}",
        builder=build_hf,
        requires="hf",
        options={"repo": rest},
    )


register_prefix("hf", _resolve_hf)

register(
    BackboneEntry(
        name="rad-dino",
        family="dinov2",
        arch="dinov2",
        source="hf:microsoft/rad-dino",
        description="RAD-DINO ViT-B/14: DINOv2 continued on chest X-rays (Microsoft)",
        builder=build_hf,
        requires="hf",
        stats=(86580480, 14, 518, 768, 12),
        options={
            "repo": "microsoft/rad-dino",
            # Architecture of the published weights, so --weights FILE and listings work offline.
            "config": {"model_type": "dinov2", "image_size": 518, "patch_size": 14, "layerscale_value": 1.0},
            # The repo's processor config (resize + centre-crop 518, single-channel X-ray stats);
            # used only when that file is not available locally.
            "preprocess": {"mean": (0.5307, 0.5307, 0.5307), "std": (0.2583, 0.2583, 0.2583)},
        },
    )
)
register(
    BackboneEntry(
        name="msn-l",
        family="msn",
        arch="vit_msn",
        source="hf:facebook/vit-msn-large",
        description="MSN ViT-L/16, ImageNet-1k (self-supervised, Meta)",
        builder=build_hf,
        requires="hf",
        stats=(303301632, 16, 224, 1024, 24),
        options={
            "repo": "facebook/vit-msn-large",
            "config": {
                "model_type": "vit_msn",
                "hidden_size": 1024,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "intermediate_size": 4096,
                "patch_size": 16,
                "image_size": 224,
            },
        },
    )
)
