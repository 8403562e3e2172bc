"""Networks that are not in peerlearn's zoo: the user's own modules, ``package.module:factory`` names and timm.

A user's network only has to return logits. ``HookedModel`` wraps it to keep the ``PeerModel``
contract (``forward_with_features``) without editing it: the penultimate features are read by a
forward hook (torchdistill's way) on a named submodule (``features_from``):

* ``"layer4"``: the output of submodule ``layer4``;
* ``"fc:input"``: the input of submodule ``fc``;
* ``None`` (default): the input of the network's last ``nn.Linear`` — for a usual classifier, the
  vector its final layer sees.

A 4-D output (feature maps ``[N, C, H, W]``) is averaged over space to ``[N, C]``; any other output is
flattened to ``[N, -1]``.

Names that the registry accepts besides its own models (``create_model``):

* ``package.module:callable`` — imported and called with the member's ``model_args``, plus
  ``num_classes`` / ``in_channels`` / ``image_size`` / ``in_features`` when it takes them;
* ``timm:<name>`` — ``timm.create_model(name, num_classes=..., in_chans=...)`` (the ``timm`` extra);
* ``python-object:package.module:Class`` — written by a run whose member was a module given from
  Python that cannot be rebuilt from a config; rebuilding it fails with a message saying so.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Optional

import torch
from torch import nn

from peerlearn.errors import ConfigError
from peerlearn.models.base import PeerModel
from peerlearn.trust import require_trusted_code

TIMM_PREFIX = "timm:"
PYTHON_OBJECT_PREFIX = "python-object:"
SHAPE_ARGS = ("num_classes", "in_channels", "image_size", "in_features")


def is_reference(name: str) -> bool:
    """Whether ``name`` points outside the zoo: ``pkg.mod:callable``, ``timm:<name>`` or a Python-object marker."""
    return name.startswith((TIMM_PREFIX, PYTHON_OBJECT_PREFIX)) or (":" in name and not name.startswith(":"))


# --------------------------------------------------------------------------- the feature hook
class _FeatureTap:
    """The hook object: keeps the last value seen while its owner is capturing (a callable object, not a
    closure, so that ``copy.deepcopy`` of the wrapper copies hook and state together)."""

    def __init__(self, read_input: bool):
        self.read_input = read_input
        self.capturing = False
        self.value: Optional[torch.Tensor] = None

    def __call__(self, module, inputs, output=None):
        if self.capturing:
            self.value = inputs[0] if self.read_input else output


def pooled_features(value: Any, where: str) -> torch.Tensor:
    """Feature maps ``[N, C, H, W]`` averaged over space; anything else flattened to ``[N, -1]``."""
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        value = value[0]
    if not isinstance(value, torch.Tensor):
        raise ConfigError(f"The features read from {where} are a {type(value).__name__}, not a tensor; "
                          "name another submodule in features_from.")
    if value.dim() == 4:
        return value.mean(dim=(2, 3))
    return value.flatten(1)


def last_linear(network: nn.Module) -> Optional[str]:
    """Name of the last ``nn.Linear`` submodule (in registration order), or None."""
    names = [name for name, module in network.named_modules() if isinstance(module, nn.Linear)]
    return names[-1] if names else None


class HookedModel(PeerModel):
    """A user's network (logits out) with penultimate features read by a hook; the network is not edited.

    ``forward(x) = network(x)``; ``forward_with_features(x)`` runs the same single forward pass and
    returns the hooked value too. Weights live under ``network.``.
    """

    wraps_network = True  # ``engine.cohort.Member.network`` unwraps it: recipes reach the user's own module

    def __init__(self, network: nn.Module, features_from: Optional[str] = None):
        super().__init__()
        self.network = network
        self.classifier = nn.Identity()  # the network keeps its own head; reset_classifier is not supported
        self.feature_dim = 0  # known after the first forward_with_features
        self.features_from = None
        self._tap: Optional[_FeatureTap] = None
        self._handle = None
        self.set_features_from(features_from)

    def set_features_from(self, features_from: Optional[str]) -> None:
        """Read the features from submodule ``features_from`` (``name`` = its output, ``name:input`` = its input)."""
        if self._handle is not None:
            self._handle.remove()
            self._tap, self._handle = None, None
        self.features_from = features_from
        read_input = features_from is None
        name = features_from if features_from is not None else last_linear(self.network)
        if features_from is not None and features_from.endswith(":input"):
            name, read_input = features_from[: -len(":input")], True
        if name is None:
            return  # no Linear layer and nothing named: features are refused when asked for
        modules = dict(self.network.named_modules())
        if name not in modules:
            shown = [n for n in modules if n][:12]
            raise ConfigError(f"features_from names the submodule {name!r}, which the network "
                              f"{type(self.network).__name__} does not have; its submodules include: "
                              f"{', '.join(shown) or 'none'}.")
        self._tap = _FeatureTap(read_input)
        hook = modules[name].register_forward_pre_hook if read_input else modules[name].register_forward_hook
        self._handle = hook(self._tap)
        self._feature_source = f"{'the input' if read_input else 'the output'} of {name!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._tap is None:
            raise ConfigError(f"The network {type(self.network).__name__} has no nn.Linear layer, so peerlearn cannot "
                              "tell where its penultimate features are; name a submodule with the member's "
                              "features_from (e.g. features_from: layer4).")
        self._tap.capturing, self._tap.value = True, None
        try:
            logits = self.network(x)
        finally:
            self._tap.capturing = False
        value, self._tap.value = self._tap.value, None
        if value is None:
            raise ConfigError(f"The hook on {self._feature_source} saw nothing during the forward pass of "
                              f"{type(self.network).__name__}; name a submodule that forward uses in features_from.")
        features = pooled_features(value, self._feature_source)
        self.feature_dim = int(features.shape[1])
        return logits, features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[1]

    def stage_paths(self) -> dict[str, str]:
        """Layer aliases, relative to ``network`` (the paths a user writes): the network's own ``stage_paths()``
        when it defines one, then ``features`` (``features_from``, else the input of the last ``nn.Linear``) and
        ``classifier`` (the last ``nn.Linear``), where they exist."""
        own = getattr(self.network, "stage_paths", None)
        aliases = dict(own()) if callable(own) else {}
        linear = last_linear(self.network)
        if self.features_from is not None or linear is not None:
            aliases.setdefault("features", self.features_from or f"{linear}:input")
        if linear is not None:
            aliases.setdefault("classifier", linear)
        return aliases

    def reset_classifier(self, num_classes: int) -> None:
        raise ConfigError(f"peerlearn cannot replace the head of a user network ({type(self.network).__name__}); "
                          "build it with the wanted num_classes instead.")


# --------------------------------------------------------------------------- factories
def import_callable(reference: str) -> Callable:
    """``package.module:attr.path`` -> the object; a missing module or attribute is a ``ConfigError``."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"The model {reference!r} is not of the form package.module:callable.")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"The model {reference!r} names the module {module_name!r}, which cannot be imported "
                          f"({error}); check the spelling and that its package is on PYTHONPATH.") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"The model {reference!r}: the module {module_name!r} has no attribute {attribute!r}.")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"The model {reference!r} names a {type(target).__name__}, not a callable that builds "
                          "a network.")
    return target


def call_factory(factory: Callable, name: str, model_args: dict, shape_args: dict) -> nn.Module:
    """Call ``factory(**model_args, **accepted shape args)`` and check that it gives an ``nn.Module``."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # some builtins have no signature: pass only model_args
        parameters = {}
    call = {k: v for k, v in shape_args.items() if k in parameters and k not in model_args}
    try:
        model = factory(**model_args, **call)
    except TypeError as error:
        raise ConfigError(f"The model {name!r} cannot be called with model_args {model_args}: {error}.") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"The model factory {name!r} returned a {type(model).__name__}, not a torch.nn.Module.")
    return model


def import_timm(what: str):
    """Import timm or say how to install it (it needs torchvision, so it may be present but unusable)."""
    try:
        import timm
    except Exception as error:  # ImportError, or torchvision failing inside timm's import
        raise ConfigError(f"{what} needs timm, which cannot be imported here ({type(error).__name__}: "
                          f"{str(error).splitlines()[0] if str(error) else ''}). Install the optional extra with "
                          "pip install 'peerlearn[timm]' (timm needs a torchvision that matches your torch).") from None
    return timm


def build_timm(name: str, model_args: dict, shape_args: dict) -> nn.Module:
    """``timm:<name>`` -> ``timm.create_model(name, num_classes, in_chans, pretrained=False, **model_args)``."""
    timm = import_timm(f"The model {name!r}")
    args = {"pretrained": False, **model_args}
    try:
        return timm.create_model(name[len(TIMM_PREFIX):], num_classes=shape_args["num_classes"],
                                 in_chans=shape_args["in_channels"], **args)
    except Exception as error:  # unknown name, bad option, failed download of pretrained weights
        raise ConfigError(f"timm cannot build {name!r} with model_args {model_args} ({error}).") from None


def build_reference(name: str, model_args: dict, shape_args: dict, features_from: Optional[str] = None) -> HookedModel:
    """Build a model named by reference (``pkg.mod:callable``, ``timm:<name>``), wrapped in ``HookedModel``."""
    if name.startswith(PYTHON_OBJECT_PREFIX):
        raise ConfigError(
            f"The model {name!r} was given to peerlearn.train as a Python object whose constructor arguments are "
            "unknown, so it cannot be rebuilt from the run's config. Rebuild it in Python and pass it again "
            "(peerlearn.train(..., members={...})), or give peerlearn a factory (package.module:callable with "
            "model_args) so that runs can be reloaded from the command line.")
    if name.startswith(TIMM_PREFIX):
        network = build_timm(name, model_args, shape_args)
    else:
        require_trusted_code(name, "a model name")  # a name read from a run or a SQL statement needs trust
        network = call_factory(import_callable(name), name, model_args, shape_args)
    return HookedModel(network, features_from)


# --------------------------------------------------------------------------- recording a Python object
def importable_name(obj: Any) -> Optional[str]:
    """``module:qualname`` when ``obj`` (a function or class) can be imported back by that name, else None."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        return None
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return None
    return f"{module}:{qualname}" if found is obj else None


def same_structure(a: nn.Module, b: nn.Module) -> bool:
    """Whether two networks have the same state-dict keys and tensor shapes."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)


def describe_instance(network: nn.Module, shape_args: dict) -> tuple[str, dict]:
    """(model, model_args) to record for a module given as an object.

    ``package.module:Class`` with no arguments when the class is importable and ``Class()`` (with the
    shape arguments it accepts) builds a network of the same structure; else the ``python-object:`` marker.
    The global RNG is left as it was (the trial build must not change the run's random draws).
    """
    cls = type(network)
    name = importable_name(cls)
    if name is not None:
        state = torch.get_rng_state()
        try:
            rebuilt = call_factory(cls, name, {}, shape_args)
            if same_structure(rebuilt, network):
                return name, {}
        except Exception:  # the constructor needs arguments we do not know
            pass
        finally:
            torch.set_rng_state(state)
    return f"{PYTHON_OBJECT_PREFIX}{cls.__module__}:{cls.__qualname__}", {}


def describe_factory(factory: Callable) -> str:
    """``package.module:callable`` for a factory given from Python, or the ``python-object:`` marker."""
    name = importable_name(factory)
    if name is not None:
        return name
    module, qualname = getattr(factory, "__module__", "?"), getattr(factory, "__qualname__", repr(factory))
    return f"{PYTHON_OBJECT_PREFIX}{module}:{qualname}"


def build_from_python(source: Any, name: str, model_args: dict, shape_args: dict,
                      features_from: Optional[str] = None) -> tuple[HookedModel, str, dict]:
    """A member given from Python: an ``nn.Module`` (used as is, trained in place) or a factory (called
    with ``model_args`` plus the shape arguments it accepts). Returns the wrapped network and the
    (model, model_args) to record in the run's config so that it can be rebuilt."""
    if isinstance(source, nn.Module):
        model, args = describe_instance(source, shape_args)
        return HookedModel(source, features_from), model, args
    if callable(source):
        network = call_factory(source, f"{name} ({getattr(source, '__qualname__', source)})", model_args, shape_args)
        return HookedModel(network, features_from), describe_factory(source), dict(model_args)
    raise ConfigError(f"The member {name!r} is a {type(source).__name__}; give a torch.nn.Module, a function that "
                      "returns one, or a model name.")
