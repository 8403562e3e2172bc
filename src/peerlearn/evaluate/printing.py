"""Plain-text tables of an ``evaluate_run`` result, for the terminal: every score in [0, 1] is shown as a
percentage (the JSON output and the run's files keep fractions); NLL is in nats."""

from __future__ import annotations

from typing import Any

from peerlearn.tables import format_table

MAX_CLASSES_SHOWN = 20  # per-class tables and confusion matrices only for this many classes or fewer


def _pct(value) -> Any:
    """A fraction as a percentage with two decimals, as `peerlearn train` prints its summary."""
    return None if value is None else f"{100 * value:.2f}"


def classification_text(result: dict[str, Any]) -> list[str]:
    """Summary table, then per-class scores and the confusion matrix of each entry (when few classes)."""
    section = result["classification"]
    where = f"the {result['split']} split" if "data" not in result else result["data"]
    if section is None:
        return [f"no labelled item in {where}: no classification metrics"]
    rows = [[name, _pct(s["top1"]), _pct(s["top5"]), _pct(s["macro_f1"]), _pct(s["roc_auc_macro"]), s["nll"]]
            for name, s in section.items()]
    lines = [f"classification on {where} ({next(iter(section.values()))['items']} labelled items)",
             format_table(["member", "top-1 %", "top-5 %", "macro F1 %", "ROC-AUC (ovr) %", "NLL"], rows)]
    names = result["class_names"]
    if len(names) > MAX_CLASSES_SHOWN:
        lines.append(f"\n{len(names)} classes: per-class scores and confusion matrices are in the JSON output "
                     f"(--json, or evaluation_{result['split']}.json in the run directory)")
        return lines
    for name, scores in section.items():
        per_class = [[c["class"], _pct(c["precision"]), _pct(c["recall"]), _pct(c["f1"]), _pct(c["roc_auc"]),
                      c["support"]]
                     for c in scores["per_class"]]
        headers = ["class", "precision %", "recall %", "F1 %", "ROC-AUC %", "items"]
        lines += [f"\n{name}: per class", format_table(headers, per_class)]
        matrix = [[names[i], *row] for i, row in enumerate(scores["confusion"])]
        lines += [f"\n{name}: confusion matrix (rows: true class, columns: predicted)",
                  format_table(["true \\ pred", *names], matrix)]
    return lines


def retrieval_text(result: dict[str, Any]) -> list[str]:
    """CMC rank-k and mAP of every member and of the cohort."""
    section = result["retrieval"]
    if section is None:
        return []
    scores = section["scores"]
    ranks = list(next(iter(scores.values()))["cmc"])
    rows = [[name, *[_pct(s["cmc"][k]) for k in ranks], _pct(s["map"]), s["queries"]] for name, s in scores.items()]
    return [f"\nretrieval: {section['query_items']} queries against {section['gallery_items']} gallery images "
            "(Market-1501 protocol; cohort = concatenated member features)",
            format_table(["member", *[f"{k.replace('rank', 'rank-')} %" for k in ranks], "mAP %", "queries"], rows)]


def format_evaluation(result: dict[str, Any]) -> str:
    return "\n".join(classification_text(result) + retrieval_text(result))
