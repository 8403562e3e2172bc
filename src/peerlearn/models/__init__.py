"""The model zoo: one registry, one factory. Importing this package registers every model."""

from peerlearn.models import inception, layerwise, mlp, mobilenet, resnet, small_cnn, wrn  # noqa: F401  (registration side effects)
from peerlearn.models.base import PeerModel
from peerlearn.models.registry import available_models, create_model, register_model

__all__ = ["PeerModel", "available_models", "create_model", "register_model"]
