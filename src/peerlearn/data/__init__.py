"""Datasets: sources, splits and batched, augmented mini-batches from memory."""

from peerlearn.data.augment import BatchAugment
from peerlearn.data.batches import Batch, BatchStream, Normalizer
from peerlearn.data.bundle import DataBundle, Split
from peerlearn.data.prepare import load_data, load_raw
from peerlearn.data.raw import RawDataset
from peerlearn.data.registry import SOURCES
from peerlearn.data.user import UserData

__all__ = [
    "Batch", "BatchAugment", "BatchStream", "DataBundle", "Normalizer", "RawDataset", "SOURCES", "Split",
    "UserData", "load_data", "load_raw",
]
