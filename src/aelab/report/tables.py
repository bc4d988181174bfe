"""One writer for every results table: ``<stem>.csv`` for programs, ``<stem>.md`` for people."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from aelab.files import write_atomic


def write_table(rows: list[dict[str, Any]], columns: list[str], path_stem: Path, intro: str) -> None:
    """One row per item; columns not in a row stay empty. The ``.md`` is what a task prints too."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path_stem.with_suffix(".csv"), buffer.getvalue())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    write_atomic(path_stem.with_suffix(".md"), intro + "\n\n" + "\n".join(lines) + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "/")


def key_values(title: str, values: dict[str, Any]) -> str:
    """What a task measured, for the console: the title, then one aligned ``name  value`` line each."""
    width = max(map(len, values), default=0)
    return "\n".join([title, *(f"  {name.ljust(width)}  {_cell(value)}" for name, value in values.items())])
