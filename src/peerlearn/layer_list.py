"""The layers of a config's members that forward hooks can read: ``peerlearn layers CONFIG`` and ``peerlearn.layers``.

The members are built exactly as a run builds them (``api.prepare_run``: the recipe's validation, your own
networks and ``features_from``, initial ``weights``), on the CPU and without ``engine.compile``, and nothing
is trained. One training input of the dataset (normalised as training normalises it) goes through each member
once, in eval mode without gradients; ``peerlearn.models.taps.layer_table`` records every submodule's output
shape on the way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

from peerlearn.config import RunConfig, load_config
from peerlearn.errors import ConfigError
from peerlearn.models.taps import layer_table
from peerlearn.user_inputs import merge_user_inputs

# Building members to look at them needs neither a GPU nor compilation (nor the CUDA options' warnings).
LISTING_OVERRIDES = {"train.device": "cpu", "engine.compile": False, "engine.precision": "fp32",
                     "engine.channels_last": False, "engine.pin_memory": False}


def layers(config: Union[str, Path, dict, RunConfig, None] = None, overrides: Optional[list[str]] = None, *,
           members: Optional[dict[str, Any]] = None, data: Any = None, features_from: Optional[dict[str, str]] = None,
           only: Optional[Sequence[str]] = None, **keyword_overrides: Any) -> list[dict[str, Any]]:
    """Every readable layer of every member of ``config`` (or of the members named in ``only``).

    ``config``, ``overrides``, ``members``, ``data``, ``features_from`` and keyword overrides are those of
    ``peerlearn.train``. One row per layer: ``member``, ``model`` (its registry name or factory), ``input`` (the
    shape of the one-item batch it was given), ``path`` (what ``LayerTaps`` and a config take: ``module.path``
    or ``module.path:input``), ``stage`` (its stage aliases or ""), ``type`` (the module's class), ``shape``
    (of the value read, for that one item: ``[1, C, H, W]``; None if the forward never reached it), ``calls``
    (times it ran in the pass) and ``in_place`` (overwritten in place later in the pass: read it with
    ``clone=True``).
    """
    from peerlearn.api import prepare_run

    run_config = load_config(config, overrides)
    explicit_members = "members" in run_config.model_fields_set
    extra = {key.replace("__", "."): value for key, value in keyword_overrides.items()}
    run_config = load_config(run_config, {**extra, **LISTING_OVERRIDES})
    run_config, user = merge_user_inputs(run_config, explicit_members, members, data, features_from)
    names = [m.name for m in run_config.members]
    unknown = [name for name in only or () if name not in names]
    if unknown:
        raise ConfigError(f"The config has no member {unknown[0]!r}; its members: {', '.join(names)}.")
    loaded, device, recipe = prepare_run(run_config, user=user, default_members=not explicit_members and not members)
    sample = recipe.normalizer(loaded.train.x[:1].to(device))
    rows = []
    for member in recipe.cohort:
        if only and member.name not in only:
            continue
        head = {"member": member.name, "model": member.info["model"], "input": list(sample.shape)}
        rows += [{**head, **row} for row in layer_table(member.model, sample)]
    return rows
