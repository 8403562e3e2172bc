"""CORAL and MMD now live in ``peerlearn.losses.alignment`` (public as ``peerlearn.losses.coral_loss`` and
``peerlearn.losses.mmd_loss``); this module keeps the old import path working."""

from peerlearn.losses.alignment import (ALIGNMENT_LOSSES, coral_loss, covariance, median_bandwidths, mmd_loss,
                                        rbf_kernel)

__all__ = ["ALIGNMENT_LOSSES", "coral_loss", "covariance", "median_bandwidths", "mmd_loss", "rbf_kernel"]
