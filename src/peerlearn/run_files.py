"""The files of a run directory, named in one place (docs/runs.md describes each).

Every module that writes or reads a run directory takes the names from here; the run reader
(``peerlearn.run_reader``) is the one reader of what a run recorded about itself.
"""

from __future__ import annotations

CONFIG_NAME = "config.yaml"  # the resolved config (what --resume and the reader validate)
RUN_RECORD_NAME = "run.json"  # what the run says about itself: members, roles, networks, inputs (engine.run_record)
WEIGHTS_NAME = "model.safetensors"  # the final weights, keyed <member>.<parameter>
CHECKPOINT_NAME = "checkpoint.safetensors"  # everything a resume needs
BEST_WEIGHTS_NAME = "best.safetensors"  # early stopping's best weights of the current stage
SUMMARY_NAME = "summary.json"  # final scores and recipe numbers
METRICS_NAME = "metrics.jsonl"  # one line per logged step and evaluation
TENSORBOARD_DIR = "tensorboard"  # TensorBoard event files
SIGNATURE_NAME = "signature.json"  # the recorded hashes and this user's signature (peerlearn.trust)
LOCK_NAME = ".lock"  # held by the process that trains the run
ANALYSIS_NAME = "analysis.json"  # peerlearn analyze
TSNE_NAME = "tsne.json"  # peerlearn analyze: the t-SNE map
REPORT_NAME = "report.html"  # peerlearn report
EXPORT_DIR = "export"  # peerlearn export (default folder)


def evaluation_name(split: str) -> str:
    """``evaluation_<split>.json``: what ``peerlearn evaluate`` saves (``data`` for labelled data of your own)."""
    return f"evaluation_{split}.json"
