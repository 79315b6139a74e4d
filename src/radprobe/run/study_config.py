"""Study files: what a study asks for (backbones x datasets x protocols x seeds), read and checked.

Every key is validated before anything runs; a bad study is one line naming the key. Protocol names
and options are checked through the protocol registry, as ``eval`` and ``--set`` check them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from radprobe.errors import OptionError, RadprobeError
from radprobe.protocols import registry
from radprobe.utils import load_yaml


class BackboneEntry(BaseModel):
    """A backbone of the study: a registry name plus optional local weights and resolution.

    ``pretrained: false`` takes the architecture's seeded random init (a control) instead of weights.
    """

    model_config = ConfigDict(extra="forbid")
    name: str
    weights: str | None = None
    resolution: int | None = Field(default=None, gt=0)
    allow_partial_weights: bool = False
    pretrained: bool = True

    def key_fields(self) -> dict[str, Any]:
        """What identifies the entry in job keys (``pretrained`` only when false: older keys stay)."""
        d = self.model_dump()
        if d.pop("pretrained"):
            return d
        return {**d, "pretrained": False}

    @property
    def weights_label(self) -> str:
        return self.weights or ("" if self.pretrained else "random-init")

    @model_validator(mode="after")
    def _weights_or_random(self) -> BackboneEntry:
        if self.weights is not None and not self.pretrained:
            raise ValueError(f"{self.name}: weights and pretrained: false exclude each other")
        return self


class DatasetEntry(BaseModel):
    """A dataset spec (see ``radprobe datasets``); ``{data_root}`` in it is replaced by the study's.

    ``protocols`` restricts which of the study's protocols run on this dataset (e.g. segmentation
    heads only on segmentation data) and ``backbones`` which of its backbones (by name, e.g. the
    ViTs for a head that reads patch grids); ``resolution`` applies to backbones that set none;
    ``options`` overrides the study's options of a protocol on this dataset only
    (``{fewshot: {rule: nih}}``). A dataset may be listed twice, e.g. once with few-shot options.
    """

    model_config = ConfigDict(extra="forbid")
    spec: str
    protocols: list[str] | None = None
    backbones: list[str] | None = None
    resolution: int | None = Field(default=None, gt=0)
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def options_of(self, protocol: str, study_options: dict[str, Any]) -> dict[str, Any]:
        """A protocol's options on this dataset: the study's, with this dataset's on top."""
        return {**study_options, **self.options.get(protocol, {})}


class StudyConfig(BaseModel):
    """A study file."""

    model_config = ConfigDict(extra="forbid")
    name: str = "study"
    out: str | None = None
    data_root: str | None = None
    backbones: list[BackboneEntry] = Field(min_length=1)
    datasets: list[DatasetEntry] = Field(min_length=1)
    protocols: dict[str, dict[str, Any]] = Field(min_length=1)
    seeds: list[Annotated[int, Field(ge=0, le=2**32 - 1)]] = Field(default_factory=lambda: [0], min_length=1)
    bootstrap: int = Field(default=1000, ge=0)
    n_blocks: int = Field(default=4, ge=1)
    batch_size: int = Field(default=64, ge=1)
    num_workers: int | None = Field(default=None, ge=0)  # None: what suits the machine
    image_cache: bool = True  # decode each split once per input geometry for every backbone
    device: str = "auto"
    # 3D classification datasets: slice features pooled per volume (2D datasets ignore it)
    volume_pool: Literal["mean", "max"] = "mean"

    @field_validator("backbones", mode="before")
    @classmethod
    def _backbone_strings(cls, v: Any) -> Any:
        return [{"name": x} if isinstance(x, str) else x for x in v] if isinstance(v, list) else v

    @field_validator("datasets", mode="before")
    @classmethod
    def _dataset_strings(cls, v: Any) -> Any:
        return [{"spec": x} if isinstance(x, str) else x for x in v] if isinstance(v, list) else v

    @field_validator("protocols", mode="before")
    @classmethod
    def _protocol_list(cls, v: Any) -> Any:
        if isinstance(v, list):
            return {p: {} for p in v}
        if isinstance(v, dict):
            return {k: ({} if o is None else o) for k, o in v.items()}
        return v

    @field_validator("protocols")
    @classmethod
    def _known_protocols(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for proto, opts in v.items():
            try:
                registry.check_options(proto, opts)
            except RadprobeError as e:
                raise ValueError(str(e)) from None
        return v

    @model_validator(mode="after")
    def _dataset_protocols(self) -> StudyConfig:
        for i, d in enumerate(self.datasets):
            for key, names in (("protocols", d.protocols or []), ("options", d.options)):
                for p in names:
                    if p not in self.protocols:
                        raise ValueError(
                            f"datasets.{i}.{key}: {p!r} is not among the study's protocols "
                            f"({', '.join(self.protocols)})"
                        )
            for p in d.options:
                try:
                    registry.check_options(p, d.options_of(p, self.protocols[p]))
                except RadprobeError as e:
                    raise ValueError(f"datasets.{i}.options: {e}") from None
            names = [b.name for b in self.backbones]
            for b in d.backbones or []:
                if b not in names:
                    raise ValueError(f"datasets.{i}.backbones: {b!r} is not among the study's backbones")
        return self


def format_errors(source: str, e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            fields = StudyConfig.model_fields if len(err["loc"]) == 1 else {}
            allowed = f"; allowed keys: {', '.join(fields)}" if fields else ""
            msg = f"unknown key{allowed}"
        parts.append(f"{loc}: {msg}")
    return f"{source}: " + "; ".join(parts)


def apply_overrides(raw: dict[str, Any], items: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (YAML-parsed values) to a raw study dict."""
    raw = copy.deepcopy(raw)
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise OptionError("--set", f"{item!r}: expected KEY.PATH=VALUE, e.g. protocols.linear.epochs=20")
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise OptionError("--set", f"{item!r}: {p!r} is not a mapping in the study")
        try:
            node[parts[-1]] = load_yaml(value)
        except yaml.YAMLError:
            raise OptionError("--set", f"{item!r}: cannot parse value {value!r}") from None
    return raw


def builtin_studies() -> dict[str, Callable[[], dict[str, Any]]]:
    """Built-in studies by name (``builtin:<name>``)."""
    from radprobe.run.builtin import BUILTINS
    from radprobe.run.paper_study import paper_2312_02366

    return {**BUILTINS, "paper-2312.02366": paper_2312_02366}


def load_study(source: str, overrides: list[str] | None = None) -> StudyConfig:
    """Read and validate a study file (or ``builtin:<name>``), with overrides applied."""
    if source.startswith("builtin:"):
        builtins = builtin_studies()
        name = source.removeprefix("builtin:")
        if name not in builtins:
            raise RadprobeError(f"{source}: unknown built-in study; available: {', '.join(sorted(builtins))}")
        raw = builtins[name]()
    else:
        path = Path(source)
        if not path.is_file():
            raise RadprobeError(f"{source}: study file not found")
        try:
            raw = load_yaml(path.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise RadprobeError(f"{source}: not valid YAML{where}") from None
        if not isinstance(raw, dict):
            raise RadprobeError(f"{source}: expected a mapping with backbones, datasets and protocols")
    raw = apply_overrides(raw, overrides or [])
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as e:
        raise RadprobeError(format_errors(source, e)) from None
