"""peerlearn: train better networks with knowledge from other networks.

Deep Mutual Learning, knowledge distillation, greedy layerwise training and transfer learning,
on one small core: a cohort of members, loss terms and a trainer that runs stages.
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING

from peerlearn.section_providers import provide_sections  # noqa: E402

# The shipped recipes provide config sections (``mutual:``, ``distill:``, ...): imported before a config is read.
provide_sections("peerlearn.recipes")

# The public names, imported on first use (PEP 562): ``import peerlearn`` and ``peerlearn --help`` do not pay for
# torch, pydantic and the recipes until something needs them.
_LAZY = {
    "RunResult": "peerlearn.api", "load_run": "peerlearn.api", "train": "peerlearn.api",
    "RunConfig": "peerlearn.config", "load_config": "peerlearn.config",
    "UserData": "peerlearn.data.user",
    "available_models": "peerlearn.models", "create_model": "peerlearn.models",
    "LayerTaps": "peerlearn.models.taps",
}

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from peerlearn.api import RunResult, load_run, train
    from peerlearn.config import RunConfig, load_config
    from peerlearn.data.user import UserData
    from peerlearn.models import available_models, create_model
    from peerlearn.models.taps import LayerTaps


def __getattr__(name: str):
    """``peerlearn.train`` and the other public names: imported from their module the first time they are read."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'peerlearn' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def evaluate_run(run_dir, split: str = "test", members=None, device: str = "cpu", save: bool = True, data=None,
                 label_column=None, trust_code: bool = False, progress="auto") -> dict:
    """Metrics of a finished run on one of its splits, or on other labelled ``data`` (see
    ``peerlearn.evaluate.runner.evaluate_run``)."""
    from peerlearn.evaluate.runner import evaluate_run as run

    return run(run_dir, split=split, members=members, device=device, save=save, data=data, label_column=label_column,
               trust_code=trust_code, progress=progress)


def analyze_run(run_dir, **options) -> dict:
    """The paper's analyses, CKA and t-SNE of a finished run (see ``peerlearn.analysis_runner.analyze_run``)."""
    from peerlearn.analysis_runner import analyze_run as run

    return run(run_dir, **options)


def sweep(config=None, **options):
    """Train a config once per seed and per grid point into one sweep folder (see ``peerlearn.sweeps.sweep``):
    ``peerlearn.sweep("c.yaml", seeds=[0, 1, 2], grid={"mutual.weight": [0.5, 1, 2]}, jobs=2)``."""
    from peerlearn.sweeps import sweep as run

    return run(config, **options)


def layers(config=None, overrides=None, **options) -> list[dict]:
    """Every layer of a config's members that forward hooks can read, with its stage name, type and output
    shape (see ``peerlearn.layer_list.layers``)."""
    from peerlearn.layer_list import layers as listing

    return listing(config, overrides, **options)


__all__ = ["LayerTaps", "RunConfig", "RunResult", "UserData", "analyze_run", "available_models", "create_model",
           "evaluate_run", "layers", "load_config", "load_run", "sweep", "train", "__version__"]
