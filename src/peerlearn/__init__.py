"""peerlearn: train better networks with knowledge from other networks.

Deep Mutual Learning, knowledge distillation, greedy layerwise training and transfer learning,
on one small core: a cohort of members, loss terms and a trainer that runs stages.
"""

__version__ = "0.1.0"

from peerlearn.api import RunResult, load_run, train  # noqa: E402
from peerlearn.config import RunConfig, load_config  # noqa: E402
from peerlearn.data.user import UserData  # noqa: E402
from peerlearn.models import available_models, create_model  # noqa: E402
from peerlearn.models.taps import LayerTaps  # noqa: E402


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
