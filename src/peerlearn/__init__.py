"""peerlearn: train better networks with knowledge from other networks.

Deep Mutual Learning, knowledge distillation, greedy layerwise training and transfer learning,
on one small core: a cohort of members, loss terms and a trainer that runs stages.
"""

__version__ = "0.1.0"

from peerlearn.api import RunResult, load_run, train  # noqa: E402
from peerlearn.config import RunConfig, load_config  # noqa: E402
from peerlearn.models import available_models, create_model  # noqa: E402

__all__ = ["RunConfig", "RunResult", "available_models", "create_model", "load_config", "load_run", "train",
           "__version__"]
