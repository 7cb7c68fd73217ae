"""The agreement rule of the real-AWS integration test (tests/result_comparison.py), on results
written by the project's own ResultWriter, the writer behind `annotate` and the batch workflow's parts."""

from __future__ import annotations

import io
from decimal import Decimal

import pytest
from result_comparison import ResultFormatError, compare_results, parse_results, scores_agree

from ontosearch.label_io import ResultWriter

T_CELL = ("CL:0000084", "T cell")
CD4 = ("CL:0000624", "CD4-positive, alpha-beta T cell")
CD8 = ("CL:0000625", "CD8-positive, alpha-beta T cell")
B_CELL = ("CL:0000236", "B cell")


def results(*rows: tuple) -> str:
    """CSV text for rows of (label, error, [(term, score), ...])."""
    handle = io.StringIO()
    writer = ResultWriter(handle, ontology="cl")
    for index, (label, error, matches) in enumerate(rows):
        writer.write(index, label, error, [
            {"rank": rank, "term_id": term[0], "term_label": term[1], "score": score}
            for rank, (term, score) in enumerate(matches, start=1)
        ])
    return handle.getvalue()


BASE = (
    ("CD4+ T cells", None, [(CD4, 0.91234), (T_CELL, 0.80111), (CD8, 0.70009)]),
    ("", "empty label", []),
    ("B cells", None, [(B_CELL, 1.0), (T_CELL, 0.5)]),
)


def diff(expected: tuple, actual: tuple) -> list[str]:
    return compare_results(parse_results(results(*expected), "local"), parse_results(results(*actual), "aws"),
                           "local", "aws")


def test_identical_results_agree():
    assert diff(BASE, BASE) == []


def test_scores_one_unit_apart_in_the_last_written_place_agree():
    # 0.91234 is written 0.9123; 0.91236 is written 0.9124: float noise across a rounding boundary.
    moved = (("CD4+ T cells", None, [(CD4, 0.91236), (T_CELL, 0.80111), (CD8, 0.70009)]), *BASE[1:])
    assert diff(BASE, moved) == []


def test_scores_two_units_apart_are_a_difference():
    moved = (("CD4+ T cells", None, [(CD4, 0.91254), (T_CELL, 0.80111), (CD8, 0.70009)]), *BASE[1:])
    found = diff(BASE, moved)
    assert len(found) == 1
    assert "rank 1 CL:0000624 scores 0.9123 in local, 0.9125 in aws (more than rounding)" in found[0]


def test_swapped_ranks_are_a_difference_even_when_the_scores_tie():
    tied = (("CD4+ T cells", None, [(CD4, 0.9), (T_CELL, 0.80001), (CD8, 0.80002)]),)
    swapped = (("CD4+ T cells", None, [(CD4, 0.9), (CD8, 0.80002), (T_CELL, 0.80001)]),)
    found = diff(tied, swapped)
    assert len(found) == 2
    assert "rank 2 is CL:0000084 in local, CL:0000625 in aws" in found[0]
    assert "ranks 2 and 3 tie at the written precision" in found[0]


def test_a_swap_of_untied_terms_carries_no_tie_note():
    swapped = (("CD4+ T cells", None, [(T_CELL, 0.91234), (CD4, 0.80111), (CD8, 0.70009)]), *BASE[1:])
    found = diff(BASE, swapped)
    assert found and all("tie" not in line for line in found)
    assert "rank 1 is CL:0000624 in local, CL:0000084 in aws" in found[0]


def test_a_different_label_a_different_error_and_a_missing_rank_are_each_reported():
    changed = (
        ("CD4+ T cells", None, [(CD4, 0.91234), (T_CELL, 0.80111)]),
        ("", "label longer than 1000 characters", []),
        ("B cells", None, [(B_CELL, 1.0), (("CL:0000084", "T-cell"), 0.5)]),
    )
    found = diff(BASE, changed)
    assert any("3 ranks in local, 2 in aws" in line for line in found)
    assert any("error 'empty label' in local, 'label longer than 1000 characters' in aws" in line
               for line in found)
    assert any("CL:0000084 is labelled 'T cell' in local, 'T-cell' in aws" in line for line in found)
    assert len(found) == 3


def test_a_missing_input_row_is_reported_and_the_rows_are_compared_in_order():
    found = diff(BASE, (BASE[0], BASE[2]))
    assert "local has 3 input rows, aws has 2" in found[0]
    assert any("input row 2: local has '', aws has 'B cells'" in line for line in found)


def test_no_match_versus_ok_is_a_status_difference():
    found = diff(BASE[:1], (("CD4+ T cells", None, []),))
    assert any("status 'ok' in local, 'no_match' in aws" in line for line in found)


def test_a_label_with_a_carriage_return_round_trips():
    rows = (("T\rcells", None, [(T_CELL, 0.75)]),)
    parsed = parse_results(results(*rows))
    assert [r.input for r in parsed] == ["T\rcells"]
    assert diff(rows, rows) == []


def test_scores_written_with_other_decimals_do_not_agree():
    assert scores_agree(Decimal("0.9123"), Decimal("0.9124"))
    assert not scores_agree(Decimal("0.9123"), Decimal("0.91230"))
    assert not scores_agree(Decimal("0.9123"), Decimal("0.9125"))


@pytest.mark.parametrize("text, message", [
    ("input,rank\n", "header"),
    (results(*BASE).replace("\nCD4+ T cells,cl,1,", "\nCD4+ T cells,cl,0,", 1), "does not follow"),
    (results(*BASE).replace(",ok,", ",done,", 1), "unknown status 'done'"),
    (results(*BASE).replace("0.9123", "high", 1), "score 'high' is not a decimal"),
    (results(*BASE).replace(",,,,error,", ",1,CL:1,x,error,", 1), "error line carries"),
])
def test_malformed_results_are_refused_with_the_line(text, message):
    with pytest.raises(ResultFormatError, match=message):
        parse_results(text, "aws")
