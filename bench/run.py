"""Run the benchmarks: every ``bench/bench_*.py`` module's ``run() -> list[dict]``.

Each row is ``{"benchmark", "value", "unit", "target", "notes"}`` (``target`` and
``notes`` may be empty). The table is printed and written to ``bench/results.md`` with
the date and the machine (CPU count, Python). Running a subset
(``bench/run.py provision``) replaces only that module's section of results.md.

Usage::

    .venv/bin/python bench/run.py            # all benchmarks (make bench)
    .venv/bin/python bench/run.py provision  # bench_provision.py only
    .venv/bin/python bench/run.py --list
    .venv/bin/python bench/run.py --no-write provision

Benchmarks are never unit tests: nothing here runs under pytest.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results.md"
COLUMNS = ("benchmark", "value", "unit", "target", "notes")
_SECTION_RE = re.compile(r"^## (bench_\w+)\s*$", re.MULTILINE)

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def discover() -> dict[str, Path]:
    """Benchmark modules by short name (``bench_provision.py`` -> ``provision``)."""
    return {p.stem[len("bench_") :]: p for p in sorted(BENCH_DIR.glob("bench_*.py"))}


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        text = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of benchmark rows."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines)


def machine() -> str:
    """One line describing where the numbers were taken."""
    return (
        f"{os.cpu_count()} CPUs (nproc), {platform.machine()}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def _sections(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    matches = list(_SECTION_RE.finditer(text))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        found[m.group(1)] = text[m.start() : end].rstrip() + "\n"
    return found


def write_results(new: dict[str, str]) -> None:
    """Replace the given modules' sections of results.md, keep the others."""
    old = _sections(RESULTS.read_text()) if RESULTS.exists() else {}
    old.update(new)
    header = (
        "# Benchmark results\n\n"
        "Written by `make bench` (`bench/run.py`); each section says when and where it ran.\n"
        "Figures are from a shared, noisy machine: compare orders of magnitude, not digits.\n"
    )
    body = "\n".join(old[name] for name in sorted(old))
    RESULTS.write_text(header + "\n" + body)


def run_module(name: str, path: Path) -> tuple[list[dict[str, Any]], float, str | None]:
    """Run one module; returns its rows, the wall time and an error line, if any."""
    start = time.perf_counter()
    try:
        rows = list(_load(path).run())
    except Exception:  # noqa: BLE001 - one failing benchmark must not hide the others
        traceback.print_exc()
        err = traceback.format_exc().strip().splitlines()[-1]
        return [], time.perf_counter() - start, err
    return rows, time.perf_counter() - start, None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    ap.add_argument("--no-write", action="store_true", help="do not update bench/results.md")
    args = ap.parse_args(argv)
    available = discover()
    if args.list:
        print("\n".join(available))
        return 0
    unknown = [n for n in args.names if n not in available]
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(unknown)}; have: {', '.join(available)}",
            file=sys.stderr,
        )
        return 2
    chosen = args.names or list(available)
    sections: dict[str, str] = {}
    failed = False
    for name in chosen:
        print(f"== bench_{name} ...", flush=True)
        load = "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
        rows, seconds, error = run_module(name, available[name])
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        text = table(rows) if rows else "(no rows)"
        print(text)
        print(f"({seconds:.1f} s)\n", flush=True)
        status = f"\n\nFAILED: {error}" if error else ""
        failed = failed or error is not None
        sections[f"bench_{name}"] = (
            f"## bench_{name}\n\n{when}; {machine()}; {load} at start; took {seconds:.1f} s."
            f"\n\n{text}{status}\n"
        )
    if not args.no_write:
        write_results(sections)
        print(f"wrote {RESULTS.relative_to(REPO)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
