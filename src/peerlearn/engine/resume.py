"""What ``--resume`` accepts: the run exactly as it was saved, or named changes that are recorded.

A resume continues the same run, so ``RUN_DIR/config.yaml`` must equal the config stored in the
checkpoint. A difference (say, an lr edited in the file) is refused with the changed dotted keys
(``ConfigError``, exit 2) instead of being silently ignored or half applied.

To go on with other settings, name them::

    peerlearn train --resume RUN_DIR --change optim.lr=0.01 --change train.epochs=40

Only settings that leave the data, the models and the stage layout alone may change: the fields declared
with ``peerlearn.config.Changeable`` (``peerlearn.config.resume_keys``), in the built-in sections and in the
recipe's own. Each change is checked by the schema, applied on top of the checkpoint's config and
recorded as ``{"step", "epoch", "key", "from", "to"}`` in the checkpoint (``changes``, kept by every
later checkpoint), in ``summary.json`` and in ``config.yaml``, which is rewritten with the new config.
The optimizer keeps its state (momentum, Adam moments) and the schedule its progress; their settings
come from the new config (``engine/guards.refresh_hyperparameters``).

A stage that had run all its epochs when the checkpoint was written (a finished run) and gets more of them
(``--change train.epochs=N``) goes on with its schedule **restarted over the added epochs**, from the base
lr (the changed ``optim.lr`` when given, else the run's own): a cosine schedule, say, decays again from the
base lr to ``min_lr`` over the N − E added epochs, a step schedule counts its steps from the restart
(``added_epochs``, ``engine/guards.restart_schedule``); the restart is recorded in the checkpoint
(``restarts``). A finished run resumed without more epochs trains nothing and says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from peerlearn.config import RunConfig, changeable_keys, changeable_on_resume, load_config
from peerlearn.engine.run_dir import save_config
from peerlearn.engine.checkpoint import load_checkpoint, load_state, save_state
from peerlearn.errors import ConfigError
from peerlearn.trust import record_files

def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "m": [{"x": 2}]}`` -> ``{"a.b": 1, "m.0.x": 2}``; lists of scalars stay leaves."""
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(tree, list) and tree and all(isinstance(item, dict) for item in tree):
        out = {}
        for index, value in enumerate(tree):
            out.update(flatten(value, f"{prefix}{index}."))
        return out
    return {prefix[:-1]: tree}


def changed_keys(before: RunConfig, after: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ, with (before, after)."""
    old, new = flatten(before.model_dump(mode="json")), flatten(after.model_dump(mode="json"))
    missing = object()
    return {key: (old.get(key), new.get(key)) for key in sorted(set(old) | set(new))
            if old.get(key, missing) != new.get(key, missing)}


def _listed(diff: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{key} ({old!r} -> {new!r})" for key, (old, new) in diff.items())


def resume_config(run_dir: Path, config_path: Path, checkpoint: Path,
                  changes: Optional[list[str]] = None) -> tuple[RunConfig, list[dict[str, Any]]]:
    """The config a resume of ``run_dir`` trains with, and the change records to add (empty: none).

    Raises ``ConfigError`` when ``config.yaml`` differs from the checkpoint's config in keys that
    ``changes`` does not name, or when a change touches a key not declared changeable (``Changeable``)."""
    state = load_checkpoint(checkpoint)  # also checks the format version, the content digest and the layout
    current = load_config(config_path)
    try:
        saved = load_config(state.get("config") or {})
    except ConfigError as error:
        raise ConfigError(f"The config stored in the checkpoint {str(checkpoint)!r} is not valid here ({error})") from None
    edited = changed_keys(saved, current)
    wanted = load_config(saved, changes) if changes else saved
    requested = changed_keys(saved, wanted)
    unexplained = {k: v for k, v in edited.items() if requested.get(k, (None, object()))[1] != v[1]}
    if unexplained:
        raise ConfigError(
            f"Cannot resume {str(run_dir)!r} exactly: {str(config_path)!r} differs from the config saved in the "
            f"checkpoint at {_listed(unexplained)}. A resume continues the same run with the same settings. Put the "
            f"file back, or continue with a new setting named on the command line (recorded in the run), e.g. "
            f"peerlearn train --resume {run_dir} --change {next(iter(unexplained))}=VALUE"
        )
    refused = [key for key in requested if not changeable_on_resume(wanted, key)]
    if refused:
        raise ConfigError(
            f"Cannot change {', '.join(refused)} in a resumed run: it changes the data, the models or the stage "
            "layout, which the checkpoint's state depends on. Start a new run instead (members.N.weights=RUN_DIR "
            "starts from this run's final weights). Keys that may change: " + ", ".join(changeable_keys(wanted)) + "."
        )
    position = state["position"]
    records = [{"step": position["global_step"], "epoch": position["global_epoch"], "key": key, "from": old,
                "to": new} for key, (old, new) in requested.items()]
    return wanted, records


def record_changes(config: RunConfig, records: list[dict[str, Any]], checkpoint: Path, config_path: Path) -> None:
    """Store the changed config and its change records in the checkpoint, then rewrite ``config.yaml``
    (both atomically; call with the run locked). Killed in between, the next resume lists the keys again."""
    state = load_state(checkpoint)
    state["config"] = config.model_dump(mode="json")
    state["changes"] = list(state.get("changes", [])) + records
    save_state(checkpoint, state)
    save_config(config, config_path)
    record_files(config_path.parent, checkpoint.name, config_path.name)


def added_epochs(state: dict[str, Any], stages: list) -> Optional[dict[str, int]]:
    """``{"stage", "epoch", "epochs"}`` when the checkpoint ``state`` was written with its stage's epochs all run
    and the current config's ``stages`` give that stage more (``epochs`` added from epoch ``epoch``); else None.

    The stage's epoch count when the checkpoint was written is its ``stage_epochs``; a checkpoint from before it
    was kept is read from the change records of this resume (``train.epochs`` changed from the position's epoch)."""
    position = state["position"]
    index = min(position["stage"], len(stages) - 1)
    done, step = position["epoch"], position["global_step"]
    if position.get("step_in_epoch", 0) != 0 or index != position["stage"]:
        return None
    had = state.get("stage_epochs")
    if had is None:
        had = next((c["from"] for c in state.get("changes", []) if c["key"] == "train.epochs" and c["step"] == step
                    and c["from"] == done), None)
    if had is None or done < had or stages[index].epochs <= done:
        return None
    return {"stage": index, "epoch": done, "epochs": stages[index].epochs - done, "step": step}
