"""Is an exported model's output the PyTorch model's? max |Δ| over a batch, against a tolerance."""

from __future__ import annotations

import numpy as np

from peerlearn.errors import PeerlearnError

TOLERANCE = 1e-4  # max |logit difference| accepted between PyTorch and an exported model


class ExportError(PeerlearnError):
    """The export failed, or the exported model does not reproduce the PyTorch outputs."""

    exit_code = 1


def max_abs_diff(reference, candidate) -> float:
    """max_i |reference_i − candidate_i| over every element (shapes must agree)."""
    reference, candidate = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ExportError(f"The exported model returns shape {candidate.shape}, PyTorch {reference.shape}.")
    if not np.isfinite(candidate).all():
        raise ExportError("The exported model returns non-finite values.")
    return float(np.abs(reference - candidate).max()) if reference.size else 0.0


def check_outputs(reference, candidate, tolerance: float = TOLERANCE, what: str = "exported model") -> float:
    """``max_abs_diff``, raising ``ExportError`` when it is not below ``tolerance``."""
    diff = max_abs_diff(reference, candidate)
    if not diff < tolerance:
        raise ExportError(f"The {what} does not reproduce PyTorch: max |Δ logits| = {diff:.3g} on the check batch, "
                          f"tolerance {tolerance:g}.")
    return diff
