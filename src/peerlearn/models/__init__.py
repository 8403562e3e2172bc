"""The model zoo: one registry, one factory. Importing this package registers every model."""

from peerlearn.models import inception, layerwise, mlp, mobilenet, resnet, small_cnn, wrn  # noqa: F401  (registration side effects)
from peerlearn.models.base import PeerModel
from peerlearn.models.multibranch import (Branch, BranchNet, BranchOutputs, MultiBranchNet, available_multibranch,
                                          branch_state_dict, create_multibranch, register_multibranch,
                                          scale_gradient)
from peerlearn.models.online_parts import OneGate, PeerAttention, PeerEnsembleClassifier
from peerlearn.models.registry import available_models, create_model, register_model

__all__ = ["PeerModel", "available_models", "create_model", "register_model",
           # shared-trunk multi-branch networks (docs/online.md)
           "MultiBranchNet", "Branch", "BranchNet", "BranchOutputs", "create_multibranch", "available_multibranch",
           "register_multibranch", "branch_state_dict", "scale_gradient",
           # trainable parts of the online-distillation methods
           "OneGate", "PeerAttention", "PeerEnsembleClassifier"]
