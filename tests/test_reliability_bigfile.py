"""A large label file streams with bounded memory and every row reaches the output.

Issue 6: "A 1,000,000-row input is streamed with bounded memory (report the peak RSS)". The figure
comes from bench/big_input.py on 1,000,000 rows; this test runs the same measurement at two sizes
(each in a fresh child process) and checks that peak RSS does not grow with the row count, and that
the output holds one line per input row.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("big_input", ROOT / "bench" / "big_input.py")
big_input = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(big_input)

# The small run already holds the interpreter and one batch; more rows may not add more than this.
MAX_GROWTH_MB = 8.0


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_peak_memory_does_not_grow_with_the_number_of_rows(tmp_path: Path, fmt: str) -> None:
    small = big_input.measure(5_000, fmt, tmp_path)
    large = big_input.measure(120_000, fmt, tmp_path)
    print(f"\n{fmt}: 5,000 rows {small['peak_rss_mb']} MB, 120,000 rows {large['peak_rss_mb']} MB "
          f"({large['input_mb']} MB input, {large['rows_per_s']} rows/s)")
    for run in (small, large):
        assert run["rows"] == run["rows_in"] == run["output_rows"]
        assert run["annotated"] + run["errors"] + run["no_match"] == run["rows_in"]
        assert run["errors"] > 0  # the file has blank and over-long rows: they are rows too
    assert large["peak_rss_mb"] - small["peak_rss_mb"] < MAX_GROWTH_MB
    assert large["peak_rss_mb"] < large["input_mb"] * 4 or large["peak_rss_mb"] < 64
