"""Pretrained feature extractors for transfer: from a peerlearn run, a weights file or timm.

Every backbone ends as a ``PeerModel`` whose ``features(x)`` give the bottleneck (penultimate)
features; its own classifier is dropped. ``.pt`` files are read with ``torch.load(weights_only=True)``
only, so a downloaded file cannot run code.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Optional

import torch
from pydantic import Field
from torch import nn

from peerlearn.config import MemberConfig, Section
from peerlearn.engine.checkpoint import load_weights
from peerlearn.engine.run_record import registry_network
from peerlearn.errors import ConfigError
from peerlearn.models import PeerModel, create_model
from peerlearn.models.user import import_timm
from peerlearn.engine.initial_weights import fit_to_model, split_source
from peerlearn.trust import read_records, reading, require_trusted_code, run_is_trusted
from peerlearn.run_files import CONFIG_NAME, WEIGHTS_NAME

TIMM_PREFIX = "timm:"


class BackboneConfig(Section):
    """One pretrained feature extractor of the transfer recipe."""

    source: str = Field(..., description="a peerlearn run directory (RUN_DIR:member picks a member), a "
                                         ".safetensors file, a .pt state dict (loaded weights-only; a plain "
                                         "state_dict of your own network needs no key prefix) or timm:<model "
                                         "name> (needs the timm extra)")
    member: Optional[str] = Field(None, description="run directory / multi-member file: which member "
                                                     "(default: the first)")
    model: Optional[str] = Field(None, description="architecture of a weights file (default: the run's, "
                                                    "else members.0.model)")
    model_args: Optional[dict[str, Any]] = Field(None, description="its options (default: the run's, "
                                                                   "else members.0.model_args)")
    input_size: Optional[int] = Field(None, gt=0, description="resize inputs to this size for this backbone "
                                                              "(e.g. two backbones at two resolutions)")
    input_pad: int = Field(0, ge=0, description="after the resize, pad this many background pixels on each side "
                                                "(digits: input_size 20 + input_pad 4 = MNIST's 28x28 layout)")
    pretrained: bool = Field(True, description="timm only: download the pretrained weights")


class TimmBackbone(PeerModel):
    """A timm model built with ``num_classes=0`` (its pooled features are the bottleneck)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.body = model
        self.feature_dim = int(model.num_features)
        self.classifier = nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def load_timm(spec: BackboneConfig, where: str, in_channels: int) -> PeerModel:
    name = spec.source[len(TIMM_PREFIX):]
    try:
        timm = import_timm(f"The backbone {spec.source!r}")
    except ConfigError as error:
        raise ConfigError(f"Invalid config: key '{where}.source': {error}") from None
    try:
        # in_chans: timm adapts the first convolution to the target's channels (summing pretrained filters)
        model = timm.create_model(name, pretrained=spec.pretrained, num_classes=0, in_chans=in_channels)
    except Exception as error:  # unknown name, download failure, ...
        raise ConfigError(f"Invalid config: key '{where}.source': timm cannot build {name!r} ({error}).") \
            from None
    backbone = TimmBackbone(model)
    backbone.network_record = {"kind": "timm", "name": name, "in_chans": in_channels}  # engine.run_record
    return backbone


def read_state(path: Path, member: Optional[str], where: str) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or .pt file; a peerlearn multi-member file is cut to one member. ``where``: the
    backbone's config key, named in messages."""
    if path.suffix == ".pt" or path.suffix == ".pth":
        try:
            state: Any = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ConfigError(f"Invalid config: key '{where}.source': {str(path)!r} cannot be read as a weights-only "
                              f"state dict ({type(error).__name__}: {str(error).splitlines()[0][:200]}).") from None
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ConfigError(f"Invalid config: key '{where}.source': {str(path)!r} does not hold a state dict "
                              "(a mapping of names to tensors).")
        tensors = dict(state)
    else:
        try:
            tensors = load_weights(path)
        except Exception as error:
            raise ConfigError(f"Invalid config: key '{where}.source': {str(path)!r} is not a readable .safetensors "
                              f"file ({error}).") from None
    prefixes = sorted({k.split(".", 1)[0] for k in tensors})
    if member is not None:
        own = {k[len(member) + 1:]: v for k, v in tensors.items() if k.startswith(member + ".")}
        if not own:
            raise ConfigError(f"Invalid config: key '{where}.member' has the value {member!r}, but {str(path)!r} "
                              f"holds no such member; it has: {', '.join(prefixes)}.")
        return own
    return tensors


def _strip_member(tensors: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """A peerlearn model.safetensors prefixes keys with member names: take the first member that fits."""
    if set(tensors) & model_keys:
        return tensors
    for prefix in dict.fromkeys(k.split(".", 1)[0] for k in tensors):
        own = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        if set(own) & model_keys:
            return own
    return tensors


def load_backbone(spec: BackboneConfig, where: str, default_member: MemberConfig,
                  data_kwargs: dict[str, Any]) -> PeerModel:
    """Build the backbone ``spec`` (at config key ``where``, named in messages) with its pretrained weights, its
    classifier removed."""
    if spec.source.startswith(TIMM_PREFIX):
        return load_timm(spec, where, data_kwargs["in_channels"])
    path, named = split_source(spec.source)  # RUN_DIR:member names the member too
    model_name, model_args, member = spec.model, spec.model_args, spec.member or named
    source_run = None  # the run directory the architecture is read from, when it is one
    if path.is_dir():
        run_config = path / CONFIG_NAME
        weights = path / WEIGHTS_NAME
        if not run_config.is_file() or not weights.is_file():
            raise ConfigError(f"Invalid config: key '{where}.source' has the value {spec.source!r}: a folder "
                              "must be a finished peerlearn run (config.yaml and model.safetensors).")
        from peerlearn.config import load_config

        try:  # the source run's files are the ones it wrote (peerlearn.trust)
            records = read_records(path)
            records.check(CONFIG_NAME)
            records.check(WEIGHTS_NAME)
        except ConfigError as error:
            raise ConfigError(f"Invalid config: key '{where}.source': {error}") from None
        source_config = load_config(run_config, import_code=False)  # another run's config: no code is imported
        members = {m.name: m for m in source_config.members}
        chosen = members.get(member) if member else source_config.members[0]
        if chosen is None:
            raise ConfigError(f"Invalid config: key '{where}.member' has the value {member!r}; the run "
                              f"{spec.source!r} has members: {', '.join(members)}.")
        member = chosen.name
        if model_name is None:  # the architecture is read from the source run: code it names needs trust
            source_run = path
            require_trusted_code(chosen.model, f"its config.yaml members.{source_config.members.index(chosen)}.model, "
                                 f"used by {where}.source", run_is_trusted(path), run_dir=path)
        model_name = model_name or chosen.model
        model_args = chosen.model_args if model_args is None else model_args
        path = weights
    elif not path.is_file():
        raise ConfigError(f"Invalid config: key '{where}.source' has the value {spec.source!r}, which is "
                          "not a run directory, a .safetensors / .pt file, or timm:<name>.")
    model_name = model_name or default_member.model
    model_args = default_member.model_args if model_args is None else model_args
    tensors = read_state(path, member, where)
    classifier = tensors.get("classifier.weight")
    if classifier is None:
        tensors_try = _strip_member(tensors, {"classifier.weight"})
        classifier = tensors_try.get("classifier.weight")
        tensors = tensors_try
    source_classes = int(classifier.shape[0]) if classifier is not None else data_kwargs["num_classes"]
    scope = (reading(run_is_trusted(source_run), f"the transfer source run {str(source_run)!r}", source_run)
             if source_run is not None else contextlib.nullcontext())
    try:
        with scope:
            model = create_model(model_name, **{**data_kwargs, "num_classes": source_classes}, **model_args)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"Invalid config: key '{where}.model': {error}.") from None
    tensors = fit_to_model(_strip_member(tensors, set(model.state_dict())), model)  # a plain state dict of your own
    shape_hint = (f" The weights may come from inputs of another size: the target data gives "
                  f"{data_kwargs['in_channels']} channel(s) of {data_kwargs['image_size']} px; set data.image_size "
                  f"or {where}.input_size to the source's size.")
    try:
        result = model.load_state_dict(tensors, strict=False)
    except RuntimeError as error:
        raise ConfigError(f"Invalid config: key '{where}.source': {str(path)!r} does not fit model "
                          f"{model_name!r}: {str(error).splitlines()[-1].strip()[:300]}.{shape_hint}") from None
    if result.missing_keys or result.unexpected_keys:
        shape_hint = (f" The weights may come from inputs of another size: the target data gives "
                      f"{data_kwargs['in_channels']} channel(s) of {data_kwargs['image_size']} px; set data.image_size "
                      f"or {where}.input_size to the source's size.")
        raise ConfigError(f"Invalid config: key '{where}.source': {str(path)!r} does not fit model "
                          f"{model_name!r} (missing {len(result.missing_keys)} tensors, e.g. "
                          f"{result.missing_keys[:3]}; unexpected {result.unexpected_keys[:3]}).{shape_hint}")
    model.classifier = nn.Identity()
    # how the run reader rebuilds it (the weights come from the run, not from the source file)
    model.network_record = registry_network(model_name, model_args, {**data_kwargs, "num_classes": source_classes},
                                            drop_classifier=True)
    return model
