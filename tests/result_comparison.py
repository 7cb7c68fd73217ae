"""Whether two annotation result CSVs say the same thing (the real-AWS integration test's verdict).

The integration test annotates one file three ways (local `annotate` on a snapshot, the deployed
service through its URL, one batch execution) and must decide whether they agree. The rule, exactly:

1. Both files have the header `ontosearch.label_io.RESULT_COLUMNS` and describe the same number of
   input rows, in the same order. An input row is one `status=ok` line per rank (ranks 1..k, in
   order), or a single `error` / `no_match` line.
2. For each input row: the same `input` text, `ontology`, `status` and `error` text; for `ok`, the
   same number of ranks, and at every rank the same `term_id` and `term_label`.
3. Scores may differ only by rounding: both are written with the same number of decimals and differ
   by at most one unit in the last written place (0.0001 at the writer's 4 decimals). Embeddings
   computed on another CPU (the arm64 Lambda, the arm64 Chroma server) differ from this machine's in
   the last float bits; rounding such a value can move its last written digit by one, never by two.

Nothing else is tolerated. In particular two terms that swap ranks are a difference even when their
written scores tie; the message then says that they tie, so a reader can tell a near-tie ordered by
float noise from a real disagreement.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from ontosearch.label_io import RESULT_COLUMNS, STATUS_ERROR, STATUS_NO_MATCH, STATUS_OK


class ResultFormatError(ValueError):
    """A results file does not have the shape every writer of results produces."""


@dataclass(frozen=True)
class Match:
    rank: int
    term_id: str
    term_label: str
    score: Decimal


@dataclass(frozen=True)
class LabelResult:
    """Everything the results say about one input row."""

    line: int  # CSV line (1 = header) of its first result line, for messages
    input: str
    ontology: str
    status: str
    error: str
    matches: tuple[Match, ...] = ()


def _score(text: str, where: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ResultFormatError(f"{where}: score {text!r} is not a decimal number") from None
    if not value.is_finite():
        raise ResultFormatError(f"{where}: score {text!r} is not a finite number")
    return value


def parse_results(text: str, source: str = "results") -> list[LabelResult]:
    """The input rows of a results CSV, in order; raises ResultFormatError naming the line."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(header) != RESULT_COLUMNS:
        raise ResultFormatError(f"{source}: header is {header!r}, expected {','.join(RESULT_COLUMNS)}")
    rows: list[LabelResult] = []
    for line_number, fields in enumerate(reader, start=2):
        where = f"{source} line {line_number}"
        if len(fields) != len(RESULT_COLUMNS):
            raise ResultFormatError(f"{where}: {len(fields)} fields, expected {len(RESULT_COLUMNS)}")
        line = dict(zip(RESULT_COLUMNS, fields, strict=True))
        status = line["status"]
        if status in (STATUS_ERROR, STATUS_NO_MATCH):
            if line["rank"] or line["term_id"] or line["score"]:
                raise ResultFormatError(f"{where}: a {status} line carries a rank, term or score")
            rows.append(LabelResult(line_number, line["input"], line["ontology"], status, line["error"]))
            continue
        if status != STATUS_OK:
            raise ResultFormatError(f"{where}: unknown status {status!r}")
        try:
            rank = int(line["rank"])
        except ValueError:
            raise ResultFormatError(f"{where}: rank {line['rank']!r} is not a whole number") from None
        if not line["term_id"]:
            raise ResultFormatError(f"{where}: an ok line without a term_id")
        match = Match(rank, line["term_id"], line["term_label"], _score(line["score"], where))
        if rank == 1:
            rows.append(LabelResult(line_number, line["input"], line["ontology"], status, line["error"],
                                    (match,)))
            continue
        previous = rows[-1] if rows else None
        if (previous is None or previous.status != STATUS_OK or previous.input != line["input"]
                or previous.ontology != line["ontology"] or previous.matches[-1].rank != rank - 1):
            raise ResultFormatError(f"{where}: rank {rank} of {line['input']!r} does not follow its rank "
                                    f"{rank - 1}")
        rows[-1] = LabelResult(previous.line, previous.input, previous.ontology, previous.status,
                               previous.error, (*previous.matches, match))
    return rows


def _places(score: Decimal) -> int:
    exponent = score.as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def scores_agree(a: Decimal, b: Decimal) -> bool:
    """Written with the same decimals and at most one unit apart in the last of them."""
    places = _places(a)
    if places != _places(b):
        return False
    return abs(a - b) <= Decimal(1).scaleb(-places)


def _tie_note(rank: int, term_id: str, matches: tuple[Match, ...]) -> str:
    """Says so when `term_id` sits at another rank whose written score ties with this rank's."""
    here = matches[rank - 1].score
    for other in matches:
        if other.term_id == term_id and other.rank != rank and scores_agree(other.score, here):
            return (f" (ranks {min(rank, other.rank)} and {max(rank, other.rank)} tie at the written "
                    f"precision: their order was decided below it)")
    return ""


def compare_results(expected: list[LabelResult], actual: list[LabelResult],
                    expected_name: str = "expected", actual_name: str = "actual") -> list[str]:
    """Every way `actual` differs from `expected` under the rule of the module docstring; [] = agree."""
    e, a = expected_name, actual_name
    differences: list[str] = []
    if len(expected) != len(actual):
        differences.append(f"{e} has {len(expected)} input rows, {a} has {len(actual)}")
    for index, (want, got) in enumerate(zip(expected, actual, strict=False), start=1):
        where = f"input row {index} ({want.input!r}; {e} line {want.line}, {a} line {got.line})"
        if want.input != got.input:
            differences.append(f"input row {index}: {e} has {want.input!r}, {a} has {got.input!r}")
            continue
        for name in ("ontology", "status", "error"):
            if getattr(want, name) != getattr(got, name):
                differences.append(f"{where}: {name} {getattr(want, name)!r} in {e}, "
                                   f"{getattr(got, name)!r} in {a}")
        if want.status != STATUS_OK or got.status != STATUS_OK:
            continue
        if len(want.matches) != len(got.matches):
            differences.append(f"{where}: {len(want.matches)} ranks in {e}, {len(got.matches)} in {a}")
        for mine, theirs in zip(want.matches, got.matches, strict=False):
            rank = mine.rank
            if mine.term_id != theirs.term_id:
                differences.append(f"{where}: rank {rank} is {mine.term_id} in {e}, {theirs.term_id} in {a}"
                                   f"{_tie_note(rank, theirs.term_id, want.matches)}")
                continue
            if mine.term_label != theirs.term_label:
                differences.append(f"{where}: rank {rank} {mine.term_id} is labelled {mine.term_label!r} "
                                   f"in {e}, {theirs.term_label!r} in {a}")
            if not scores_agree(mine.score, theirs.score):
                differences.append(f"{where}: rank {rank} {mine.term_id} scores {mine.score} in {e}, "
                                   f"{theirs.score} in {a} (more than rounding)")
    return differences
