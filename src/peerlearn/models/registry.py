"""One registry and one factory for every network: ``create_model(name, num_classes=..., ...)``."""

from __future__ import annotations

import inspect
from typing import Callable

from peerlearn.models.base import PeerModel
from peerlearn.models.user import build_reference, is_reference

_REGISTRY: dict[str, Callable[..., PeerModel]] = {}


def register_model(name: str) -> Callable:
    """Decorator: make a model builder available to ``create_model`` and the config."""

    def decorate(builder: Callable[..., PeerModel]) -> Callable[..., PeerModel]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = builder
        return builder

    return decorate


def accepts_option(name: str, option: str) -> bool:
    """Whether the builder of model ``name`` takes the keyword ``option`` (e.g. ``in_features``).

    A model named by reference (``pkg.mod:callable``, ``timm:<name>``) is the user's to fit: True."""
    if is_reference(name):
        return True
    return name in _REGISTRY and option in inspect.signature(_REGISTRY[name]).parameters


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32,
                 in_features: int | None = None, features_from: str | None = None, **kwargs) -> PeerModel:
    """Build model ``name`` for ``num_classes`` classes and inputs of the given shape.

    Builders take what they need among ``in_channels``, ``image_size`` and ``in_features``;
    the rest of ``kwargs`` are the model's own options (widths, dropout, depth, ...).
    ``name`` may also be ``package.module:callable`` or ``timm:<name>`` (see ``peerlearn.models.user``):
    the network is built with ``kwargs`` (plus the shape arguments it accepts) and wrapped in a
    ``HookedModel`` whose features are read from submodule ``features_from``.
    """
    if is_reference(name):
        shape_args = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size,
                      "in_features": in_features if in_features is not None else in_channels * image_size * image_size}
        return build_reference(name, kwargs, shape_args, features_from)
    if features_from is not None:
        raise ValueError(f"features_from is for networks of your own; the zoo's model {name!r} has its features "
                         "built in")
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(available_models())}")
    builder = _REGISTRY[name]
    accepted = inspect.signature(builder).parameters
    shape_args = {"in_channels": in_channels, "image_size": image_size,
                  "in_features": in_features if in_features is not None else in_channels * image_size * image_size}
    call = {k: v for k, v in shape_args.items() if k in accepted}
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        options = [p for p in accepted if p not in ("num_classes", *shape_args)]
        raise ValueError(f"model {name!r} has no option(s) {', '.join(unknown)}; its options: {', '.join(options) or 'none'}")
    return builder(num_classes=num_classes, **call, **kwargs)


def builder_location(name: str) -> str | None:
    """``module:qualname`` of the builder registered as ``name`` (None when ``name`` is not registered), so a
    run of a model registered from Python can find it again in another process."""
    builder = _REGISTRY.get(name)
    if builder is None:
        return None
    return f"{builder.__module__}:{builder.__qualname__}"
