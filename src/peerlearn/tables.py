"""Plain-text tables of run results, for the terminal."""

from __future__ import annotations

from typing import Any, Sequence


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned first column, right-aligned others, one space of padding."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    numeric = [i > 0 and all(_is_number(row[i]) for row in cells[1:]) for i in range(len(headers))]

    def line(row):
        return "  ".join(v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i]) for i, v in enumerate(row)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return text == ""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def summary_rows(summary: dict[str, Any], label: str = "") -> list[list[Any]]:
    """One row per member and one for the ensemble: val / test top-1 (%), test top-5 (%)."""
    rows = []
    entries = list(summary["members"].items())
    if summary.get("ensemble"):
        entries.append(("ensemble", summary["ensemble"]))
    for name, scores in entries:
        val = scores.get("val", {}).get("top1")
        test = scores.get("test", {})
        rows.append([f"{label}{name}", _pct(val), _pct(test.get("top1")), _pct(test.get("top5"))])
    return rows


def format_summary(summary: dict[str, Any], label: str = "") -> str:
    return format_table(["member", "val top-1 %", "test top-1 %", "test top-5 %"], summary_rows(summary, label))


def _pct(value):
    return None if value is None else f"{100 * value:.2f}"
