"""Reading intermediate layers during the forward pass, by module path: forward hooks, the model never edited.

Feature and relational distillation (FitNets hints, attention transfer, similarity-preserving, RKD, PKT, CRD)
and online distillation read layers inside a teacher or a student. As in torchdistill, ``LayerTaps`` registers
one forward hook per layer, once, and records what the layers produce only inside ``capture()``:

    taps = LayerTaps(model, ["stage2", "classifier:input"])
    with taps.capture() as seen:
        logits = model(x)                  # the one forward pass: no second pass reads the layers
    hint = seen["stage2"]                  # part of the graph: a loss on it trains the layers below it

A layer is named, relative to the network (``tap_root``), by

* ``"module.path"``: the output of that submodule (a dotted name from ``named_modules()``);
* ``"module.path:input"``: its first positional input;
* a stage alias (``stage_paths``): the zoo's ``stem``, ``stage1``, ``stage2``, ..., ``features`` (the
  classifier's input) and ``classifier`` (its output); an alias of an output takes ``:input`` too.
  A real module path wins over an alias of the same name.

For a network of your own (a ``HookedModel``) paths are relative to your module (``model.network``), as in
``features_from``; ``torch.compile``'s wrapper (``_orig_mod``) and (Distributed)DataParallel's ``module`` are
looked through. An unknown name is a ``ConfigError`` that lists close matches and the stage names.

What a capture holds and when:

* hooks record only inside ``capture()``; outside it (evaluation, peers' no-grad passes) they return at once
  and hold nothing. When the block ends the values belong to the ``Captured`` object it yielded: the taps and
  the model keep no reference to them;
* values are not detached or copied: they are the tensors the forward computed (in the autocast dtype under
  autocast), so gradients of a loss on them reach the layers below;
* a module called several times in one pass gives its last call's value (``Captured.calls`` counts the calls);
* a layer the forward never reached is a ``ConfigError`` when the block ends (``strict=True``, the default) or
  when it is read (``strict=False``), never a silent ``None``; so is the next case;
* a value changed in place after its layer produced it (typically by a following ``ReLU(inplace=True)``) is not
  what the layer produced: reading it raises, naming the layer; ``clone=True`` records a copy instead (the
  copy is differentiable). Tensors made under ``torch.inference_mode`` or inside a compiled region carry no
  version counter, so there the check cannot run: run one ``no_grad`` capture first (see ``layer_table``).

``copy.deepcopy`` of a tapped model gives a copy whose hooks are idle for good (they never record into the
original's captures and hold nothing); deep-copying the ``LayerTaps`` (alone or with its model in one call)
gives working taps on the copied model. ``remove()`` takes the hooks off; ``with LayerTaps(...) as taps:``
removes them at the end of the block.
"""

from __future__ import annotations

import difflib
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Optional, Union

import torch
from torch import nn

from peerlearn.errors import ConfigError
from peerlearn.models.user import HookedModel, last_linear

INPUT_SUFFIX = ":input"
OUTPUT_SUFFIX = ":output"
STAGE = re.compile(r"stage(\d+)")


# --------------------------------------------------------------------------- naming layers
@dataclass(frozen=True)
class Layer:
    """A resolved layer: a submodule ``path`` of the tap root and whether its input (else its output) is read."""

    path: str
    read_input: bool = False

    @property
    def spec(self) -> str:
        """``path`` or ``path:input``: the form ``LayerTaps`` takes."""
        return f"{self.path}{INPUT_SUFFIX}" if self.read_input else self.path


def unwrap(model: nn.Module) -> nn.Module:
    """``model`` without the wrappers of ``torch.compile`` (``_orig_mod``) and (Distributed)DataParallel."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def tap_root(model: nn.Module) -> nn.Module:
    """The module that layer paths are relative to: your network inside a ``HookedModel``, else the model."""
    inner = unwrap(model)
    return inner.network if isinstance(inner, HookedModel) else inner


def _declared_aliases(model: nn.Module) -> dict[str, str]:
    inner = unwrap(model)
    method = getattr(inner, "stage_paths", None)
    return dict(method()) if callable(method) else {}


def stage_paths(model: nn.Module) -> dict[str, str]:
    """The model's stage aliases (``alias -> "path"`` or ``"path:input"``, shallow to deep), e.g. for
    ``resnet32``: ``stem, stage1 (blocks.4), stage2 (blocks.9), stage3 (blocks.14), features
    (classifier:input), classifier``. An alias spelled like a submodule that it does not name is left out
    (the submodule wins). Empty for a module that declares none."""
    root = tap_root(model)
    names = {name for name, _ in root.named_modules(remove_duplicate=False)}
    return {alias: target for alias, target in _declared_aliases(model).items()
            if alias not in names or split_spec(target)[0] == alias}


def split_spec(text: str) -> tuple[str, bool]:
    """``"a.b"`` -> ("a.b", False); ``"a.b:input"`` -> ("a.b", True); ``"a.b:output"`` -> ("a.b", False)."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"A layer is named by a module path such as 'layer4' or 'fc:input', got {text!r}.")
    for suffix, read_input in ((INPUT_SUFFIX, True), (OUTPUT_SUFFIX, False)):
        if text.endswith(suffix) and len(text) > len(suffix):
            return text[: -len(suffix)], read_input
    if ":" in text:
        raise ConfigError(f"The layer {text!r} is not of the form 'module.path' (its output) or "
                          "'module.path:input' (its input).")
    return text, False


def _network_name(model: nn.Module) -> str:
    inner = unwrap(model)
    if isinstance(inner, HookedModel):
        return f"your network {type(inner.network).__name__}"
    return f"the network {type(inner).__name__}"


def _unknown_layer(model: nn.Module, text: str, path: str, aliases: dict[str, str]) -> ConfigError:
    root = tap_root(model)
    names = [name for name, _ in root.named_modules(remove_duplicate=False) if name]
    message = f"The layer {text!r} is not a submodule of {_network_name(model)}"
    if isinstance(unwrap(model), HookedModel) and path.startswith("network.") and path[8:] in names:
        message += f" (paths are relative to your network: write {text[8:]!r})"
    close = difflib.get_close_matches(path, list(dict.fromkeys(names + list(aliases))), n=5, cutoff=0.6)
    if close:
        message += f"; close matches: {', '.join(close)}"
    if aliases:
        message += "; its stage names: " + ", ".join(f"{a} ({t})" for a, t in aliases.items())
    else:
        top = [name for name, _ in root.named_children()]
        message += f"; its top-level submodules: {', '.join(top[:12]) or 'none'}{' ...' if len(top) > 12 else ''}"
    return ConfigError(message + ". `peerlearn layers CONFIG` lists every layer with its output shape.")


def resolve_layer(model: nn.Module, text: str) -> Layer:
    """The ``Layer`` that ``text`` names in ``model`` (a module path, ``path:input`` or a stage alias)."""
    name, read_input = split_spec(text)
    aliases = stage_paths(model)
    path = name
    if name in aliases:
        path, alias_input = split_spec(aliases[name])
        if alias_input and read_input:
            raise ConfigError(f"The layer {text!r}: the stage name {name!r} already reads an input "
                              f"({aliases[name]}); write {name!r}.")
        read_input = read_input or alias_input
    try:
        tap_root(model).get_submodule(path)
    except AttributeError:
        raise _unknown_layer(model, text, path, aliases) from None
    return Layer(path, read_input)


def penultimate(model: nn.Module) -> str:
    """The layer of the model's penultimate features, the vector its classifier reads (``features``): for the
    zoo ``classifier:input``; for your network its ``features_from``, else the input of its last ``nn.Linear``."""
    target = _declared_aliases(model).get("features")
    if target is None:
        linear = last_linear(tap_root(model))
        if linear is None:
            raise ConfigError(f"{_network_name(model)[0].upper()}{_network_name(model)[1:]} has no nn.Linear layer, "
                              "so its penultimate features are unknown; name the layer to read.")
        target = f"{linear}{INPUT_SUFFIX}"
    return resolve_layer(model, target).spec


def last_stage(model: nn.Module) -> str:
    """The layer of the model's deepest stage (the highest ``stage<k>`` alias, e.g. ``blocks.14`` of
    ``resnet32``): the default layer of feature distillation. A network without stage names (yours, unless it
    defines ``stage_paths()``) gives its penultimate features (``penultimate``)."""
    aliases = stage_paths(model)
    stages = [alias for alias in aliases if STAGE.fullmatch(alias)]
    if not stages:
        return penultimate(model)
    deepest = max(stages, key=lambda alias: int(STAGE.fullmatch(alias).group(1)))
    return resolve_layer(model, deepest).spec


# --------------------------------------------------------------------------- recording
class _NoInput:
    """Recorded for ``path:input`` when the module was called with keyword arguments only."""


_NO_INPUT = _NoInput()


class _Recorder:
    """What one ``LayerTaps`` records during a capture. A deep copy starts idle and empty: a copy of a model
    made during a capture never records into that capture or holds its tensors."""

    def __init__(self):
        self.active = False
        self.values: dict[str, Any] = {}
        self.calls: dict[str, int] = {}
        self.versions: dict[str, int] = {}

    def __deepcopy__(self, memo) -> "_Recorder":
        return _Recorder()

    def clear(self) -> None:
        self.values.clear()
        self.calls.clear()
        self.versions.clear()

    def record(self, key: str, value: Any, clone: bool) -> None:
        if isinstance(value, torch.Tensor):
            if clone:
                value = value.clone()
            elif not torch.compiler.is_compiling() and not value.is_inference():
                self.versions[key] = value._version  # in-place writes after this are detected on reading
        self.values[key] = value
        self.calls[key] = self.calls.get(key, 0) + 1


class _OutputTap:
    """Forward hook: records the module's output while its recorder is capturing (an object, not a closure,
    so that a deep copy of the model copies it with its state)."""

    def __init__(self, recorder: _Recorder, key: str, clone: bool):
        self.recorder, self.key, self.clone = recorder, key, clone

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.recorder.active:
            self.recorder.record(self.key, output, self.clone)


class _InputTap(_OutputTap):
    """Forward pre-hook: records the module's first positional input while its recorder is capturing."""

    def __call__(self, module: nn.Module, args: tuple) -> None:  # type: ignore[override]
        if self.recorder.active:
            self.recorder.record(self.key, args[0] if args else _NO_INPUT, self.clone)


# --------------------------------------------------------------------------- the manager
class Captured(Mapping):
    """The layers read by one ``LayerTaps.capture()``: ``captured[name]`` is the value of the layer named
    ``name`` (as given to ``LayerTaps``); iteration gives the names the forward reached; ``calls[name]`` is how
    many times the layer ran. Readable inside the block (after the forward) and after it."""

    def __init__(self, taps: "LayerTaps", recorder: _Recorder):
        self._layers = taps.layers
        self._network = taps.network_name
        self._recorder: Optional[_Recorder] = recorder  # live while the block runs
        self._values: dict[str, Any] = {}
        self._calls: dict[str, int] = {}
        self._versions: dict[str, int] = {}

    def _close(self) -> None:
        """Take the values from the recorder (which is then emptied): from now on only this object holds them."""
        recorder, self._recorder = self._recorder, None
        self._values, self._calls, self._versions = dict(recorder.values), dict(recorder.calls), dict(recorder.versions)
        recorder.clear()

    def _state(self) -> tuple[dict, dict, dict]:
        recorder = self._recorder
        if recorder is not None:
            return recorder.values, recorder.calls, recorder.versions
        return self._values, self._calls, self._versions

    @property
    def calls(self) -> dict[str, int]:
        """How many times each tapped layer ran in this pass (0: never reached)."""
        calls = self._state()[1]
        return {name: calls.get(layer.spec, 0) for name, layer in self._layers.items()}

    def missing(self) -> list[str]:
        """The tapped layers that the forward did not reach."""
        values = self._state()[0]
        return [name for name, layer in self._layers.items() if layer.spec not in values]

    def __getitem__(self, name: str) -> Any:
        layer = self._layers.get(name)
        if layer is None:
            raise KeyError(f"{name!r} is not a tapped layer; tapped: {', '.join(self._layers)}")
        values, _, versions = self._state()
        if layer.spec not in values:
            raise ConfigError(f"The layer {name!r} ({layer.spec}) of {self._network} was not reached by the forward "
                              "pass, so it has no value: name a layer that forward calls (a submodule used through "
                              "another method than its call, or skipped by forward, never runs its hooks).")
        value = values[layer.spec]
        if value is _NO_INPUT:
            raise ConfigError(f"The layer {name!r}: {layer.path!r} was called with keyword arguments only, so its "
                              "input cannot be read; read the output of the layer before it.")
        if layer.spec in versions and value._version != versions[layer.spec]:
            raise ConfigError(f"The layer {name!r} ({layer.spec}) of {self._network} was changed in place after it "
                              "was produced (e.g. by a following ReLU(inplace=True)), so it no longer holds what the "
                              "layer gave; read the layer that changed it, or tap with LayerTaps(..., clone=True).")
        return value

    def __iter__(self) -> Iterator[str]:
        values = self._state()[0]
        return iter([name for name, layer in self._layers.items() if layer.spec in values])

    def __len__(self) -> int:
        return len(list(iter(self)))

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is a tapped layer that the forward reached (it may still raise when read)."""
        return name in list(iter(self))

    def check(self) -> None:
        """Raise ``ConfigError`` unless every tapped layer can be read: reached by the forward, not changed in
        place since."""
        missing = self.missing()
        if missing:
            raise ConfigError(f"The forward pass of {self._network} did not reach the layer(s) "
                              f"{', '.join(f'{name} ({self._layers[name].spec})' for name in missing)}, so they have no "
                              "value: name layers that forward calls (a submodule used through another method than "
                              "its call, or skipped by forward, never runs its hooks).")
        for name in self:
            self[name]


class LayerTaps:
    """Forward hooks on named layers of ``model``, registered once; values recorded only inside ``capture()``.

    ``layers`` is one name or several (see the module: ``"path"``, ``"path:input"``, stage aliases); they are
    resolved now, so a wrong name fails before any training. ``layers`` maps each given name to its resolved
    ``Layer``; names that resolve to the same layer share one hook. ``clone=True`` records copies (for layers
    that a later in-place operation overwrites).
    """

    def __init__(self, model: nn.Module, layers: Union[str, Iterable[str]], *, clone: bool = False):
        names = [layers] if isinstance(layers, str) else list(layers)
        self.model = model
        self.clone = clone
        self.layers: dict[str, Layer] = {name: resolve_layer(model, name) for name in names}
        self.network_name = _network_name(model)
        self._recorder = _Recorder()
        self._removed = False
        root = tap_root(model)
        for layer in dict.fromkeys(self.layers.values()):
            module = root.get_submodule(layer.path)
            if layer.read_input:
                module.register_forward_pre_hook(_InputTap(self._recorder, layer.spec, clone))
            else:
                module.register_forward_hook(_OutputTap(self._recorder, layer.spec, clone))

    @contextmanager
    def capture(self, strict: bool = True) -> Iterator[Captured]:
        """Record the tapped layers during the forward pass(es) run inside the block.

        Yields a ``Captured`` (name -> value). With ``strict`` (the default), when the block ends without an
        exception every tapped layer must be readable (``Captured.check``: reached, not changed in place), else
        ``ConfigError``; without, such a layer raises only when it is read. Captures do not nest.
        """
        if self._removed:
            raise RuntimeError("These LayerTaps were removed; make new ones to read layers again.")
        recorder = self._recorder
        if recorder.active:
            raise RuntimeError("LayerTaps.capture() is already running on these taps; captures do not nest.")
        recorder.clear()
        captured = Captured(self, recorder)
        recorder.active = True
        try:
            yield captured
        finally:
            recorder.active = False
            captured._close()
        if strict:
            captured.check()

    def remove(self) -> None:
        """Take every hook of these taps off the model (and nothing else). Safe to call twice."""
        for module in tap_root(self.model).modules():
            for hooks in (module._forward_hooks, module._forward_pre_hooks):
                ours = [key for key, hook in hooks.items()
                        if isinstance(hook, _OutputTap) and hook.recorder is self._recorder]
                for key in ours:
                    del hooks[key]
        self._removed = True

    def __enter__(self) -> "LayerTaps":
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def __repr__(self) -> str:
        layers = ", ".join(name if name == layer.spec else f"{name} -> {layer.spec}" for name, layer in self.layers.items())
        return f"LayerTaps({type(tap_root(self.model)).__name__}: {layers})"


# --------------------------------------------------------------------------- listing
def _shape(value: Any) -> Any:
    """A tensor's shape as a list; the shapes inside tuples, lists and dicts; the type name of anything else."""
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, (tuple, list)):
        return [_shape(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _shape(v) for k, v in value.items()}
    return None if value is None or value is _NO_INPUT else type(value).__name__


def _version(value: Any) -> Optional[int]:
    """A tensor's count of in-place writes; None for anything else and for inference tensors (they keep none)."""
    if isinstance(value, torch.Tensor) and not value.is_inference():
        return value._version
    return None


def layer_table(model: nn.Module, sample: torch.Tensor) -> list[dict[str, Any]]:
    """Every layer of ``model`` that ``LayerTaps`` can read, from one forward pass of ``sample`` (eval mode, no
    gradient; the model's mode is restored, nothing else changes).

    One row per submodule, in ``named_modules()`` order, and one per stage alias that reads an input (just before
    its module's row): ``path`` (the tap spec), ``stage`` (its aliases, comma-separated, or ""), ``type``,
    ``shape`` (of the value a tap reads: the output, or the input for ``path:input``; None when the forward did
    not reach the module), ``calls`` (times it ran) and ``in_place`` (its value was overwritten in place later
    in the pass: tap it with ``clone=True``).
    """
    root = tap_root(model)
    aliases: dict[str, list[str]] = {}
    for alias, target in stage_paths(model).items():
        aliases.setdefault(resolve_layer(model, target).spec, []).append(alias)
    seen: dict[str, dict[str, Any]] = {}

    def pre_hook(name: str):
        def hook(module, args):
            value = args[0] if args else _NO_INPUT
            entry = seen.setdefault(name, {"calls": 0})
            entry["input"] = value
            entry["input_version"] = _version(value)
        return hook

    def post_hook(name: str):
        def hook(module, args, output):
            entry = seen.setdefault(name, {"calls": 0})
            entry["calls"] += 1
            entry["output"] = output
            entry["output_version"] = _version(output)
        return hook

    handles = []
    modules = [(name, module) for name, module in root.named_modules() if name]
    for name, module in modules:
        handles.append(module.register_forward_pre_hook(pre_hook(name)))
        handles.append(module.register_forward_hook(post_hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    def changed(entry: dict, side: str) -> bool:
        value, version = entry.get(side), entry.get(f"{side}_version")
        return version is not None and value._version != version

    rows = []
    for name, module in modules:
        entry = seen.get(name, {"calls": 0})
        for spec, side in ((f"{name}{INPUT_SUFFIX}", "input"), (name, "output")):
            if side == "input" and spec not in aliases:
                continue
            rows.append({"path": spec, "stage": ", ".join(aliases.get(spec, [])), "type": type(module).__name__,
                         "shape": _shape(entry.get(side)), "calls": entry["calls"],
                         "in_place": changed(entry, side)})
    return rows
