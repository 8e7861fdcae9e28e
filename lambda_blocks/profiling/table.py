"""The tidy profile CSV: one row per key, atomic rewrite, merged with what is there. The one home of profile rows."""
from __future__ import annotations

import csv
import json
import os
from typing import Mapping, Sequence


KEY_COLUMNS = ("kind", "variant", "preset", "channels", "config", "height", "width", "batch", "pass", "dtype",
               "device", "hardware", "threads")
CSV_COLUMNS = (
    "kind", "variant", "preset", "channels", "config", "height", "width", "pixels", "batch", "pass",
    "params", "macs", "macs_fvcore", "macs_torch", "macs_fvcore_other", "unsupported_ops",
    "latency_ms_median", "latency_ms_iqr", "latency_reps", "latency_method", "peak_mem_mb", "mem_method",
    "device", "dtype", "threads", "torch_version", "hardware", "error", "notes", "measured_at",
)


def row_key(row: Mapping) -> tuple:
    """The identity of a row: every ``KEY_COLUMNS`` value as a string (CSV round-trip safe)."""
    return tuple("" if row.get(k) is None else str(row.get(k)) for k in KEY_COLUMNS)


class NotAProfileTable(ValueError):
    """``--out`` points at a file that is not a profile table (it is never overwritten)."""


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Rows of an existing profile CSV ([] when there is none). A file that is not a profile table
    (no header, or one without the key columns) raises ``NotAProfileTable``: it is never replaced."""
    if not os.path.exists(path):
        return []
    if os.path.isdir(path):
        raise NotAProfileTable(f"{path} is a folder, not a profile table (.csv)")
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise NotAProfileTable(f"{path} is not a profile table ({exc}); refusing to overwrite it") from None
    need = {"kind", "variant", "height", "width", "pass"}
    if os.path.getsize(path) and not need <= set(header):
        raise NotAProfileTable(f"{path} is not a profile table (its header lacks {sorted(need - set(header))}); "
                               "refusing to overwrite it: choose another --out")
    return rows


def write_rows_atomic(path: str | os.PathLike, rows: Sequence[Mapping], columns: Sequence[str] = CSV_COLUMNS) -> None:
    """Write ``rows`` to ``path`` atomically (``records.atomic_write_text``, the package's one writer)."""
    import io

    from ..records import atomic_write_text

    extra = sorted({k for r in rows for k in r} - set(columns))
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(columns) + extra, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    atomic_write_text(os.fspath(path), buf.getvalue())


def merge_rows(path: str | os.PathLike, new_rows: Sequence[Mapping], columns: Sequence[str] = CSV_COLUMNS) -> list[dict]:
    """Rows of ``path`` with ``new_rows`` merged in (a new row replaces the old row of its key);
    writes the result atomically and returns it."""
    merged: dict[tuple, dict] = {row_key(r): dict(r) for r in read_rows(path)}
    for r in new_rows:
        merged[row_key(r)] = dict(r)
    rows = list(merged.values())
    write_rows_atomic(path, rows, columns)
    return rows


def config_string(kwargs: Mapping | None) -> str:
    """Canonical JSON of extra constructor arguments ("" when none)."""
    return json.dumps(dict(kwargs), sort_keys=True, separators=(",", ":")) if kwargs else ""
