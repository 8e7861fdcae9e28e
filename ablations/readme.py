"""Re-quote the generated tables in the README (``make readme``, after ``make figures``).

Each Markdown table that ``make figures`` (``paper_assets/<preset>/*.md``) or a benchmark
(``results/*.md``) writes is quoted verbatim in the README; tests/test_ablations.py fails when a
quoted row differs. This replaces, for every generated table, the README's table with the same
header line by the file's rows, so nobody copies numbers by hand. A generated table whose header
the README does not have is reported, not inserted (where it goes is a writing decision).

    python -m ablations.readme [--preset dev] [--check]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tables(path: Path) -> list[tuple[list[str], str]]:
    """The Markdown tables of a file, each with its caption: (runs of consecutive lines starting
    with '|', the first non-blank line after the run, or "")."""
    lines = path.read_text().splitlines()
    return [(t, _caption(lines, end)) for t, end in _runs(lines)]


def _runs(lines: list[str]) -> list[tuple[list[str], int]]:
    out, cur = [], []
    for k, ln in enumerate(lines):
        if ln.startswith("|"):
            cur.append(ln)
        elif cur:
            out.append((cur, k))
            cur = []
    if cur:
        out.append((cur, len(lines)))
    return out


def _caption(lines: list[str], end: int) -> str:
    for ln in lines[end:end + 3]:
        if ln.strip():
            return "" if ln.startswith("|") else ln.strip()
    return ""


def _similarity(a: str, b: str) -> float:
    """Word overlap of two captions (Jaccard), 0 when either is missing."""
    wa, wb = set(a.split()), set(b.split())
    return len(wa & wb) / len(wa | wb) if wa and wb else 0.0


def sync(readme: str, sources: list[Path]) -> tuple[str, list[str], list[str]]:
    """(new README text, tables replaced, tables whose header the README lacks).

    Tables with the same header line (one benchmark on two machines) are told apart by content:
    each quote is replaced by the generated table that shares the most lines with it, and between
    tables that share as many (a rerun changes every row), by the one whose caption (the line after
    the table: the command and the machine) is closest to the quote's."""
    lines = readme.splitlines()
    tables = [(src, t, cap) for src in sources for t, cap in _tables(src)]
    replaced, missing = [], []
    for src, table, _ in tables:
        if table[0] not in lines:
            missing.append(f"{src.relative_to(ROOT) if src.is_relative_to(ROOT) else src}: {table[0][:60]}")
    i = 0
    while i < len(lines):
        cands = [(src, t, cap) for src, t, cap in tables if t[0] == lines[i]]
        if not cands or (i > 0 and lines[i - 1].startswith("|")):
            i += 1
            continue
        j = i
        while j < len(lines) and lines[j].startswith("|"):
            j += 1
        quote, quote_cap = set(lines[i:j]), _caption(lines, j)
        src, table, _ = max(cands, key=lambda c: (len(quote & set(c[1])), _similarity(quote_cap, c[2])))  # first of the best on a tie
        lines[i:j] = table
        replaced.append(src.name)
        i += len(table)
    return "\n".join(lines) + ("\n" if readme.endswith("\n") else ""), replaced, missing


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ablations.readme", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="dev")
    ap.add_argument("--check", action="store_true", help="exit 1 if the README is not current; write nothing")
    args = ap.parse_args(argv)
    from lambda_blocks.records import atomic_write_text

    readme_path = ROOT / "README.md"
    sources = sorted((ROOT / "paper_assets" / args.preset).glob("*.md")) + sorted((ROOT / "results").glob("*.md"))
    old = readme_path.read_text()
    new, replaced, missing = sync(old, sources)
    for m in missing:
        print(f"not quoted in the README: {m}", file=sys.stderr)
    if args.check:
        print("README current" if new == old else "README out of date: run python -m ablations.readme")
        return 0 if new == old else 1
    if new != old:
        atomic_write_text(readme_path, new)
    print(f"README: {len(replaced)} table(s) re-quoted" + (" (changed)" if new != old else " (unchanged)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
