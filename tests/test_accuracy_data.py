"""The held-out sets in bench/data/: well-formed, large enough, and pointing at live terms."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ontosearch.ontologies import load_ontology

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from accuracy import NEW_SUFFIX, REAL_WORLD_SETS, read_set  # noqa: E402
from variants import variants_for  # noqa: E402

ONTOLOGIES = ("cl", "uberon", "mondo")


@pytest.fixture(scope="module")
def terms() -> dict[str, dict]:
    return {name: load_ontology(name).by_id() for name in ONTOLOGIES}


@pytest.mark.parametrize("name", ONTOLOGIES)
@pytest.mark.parametrize(
    "set_name",
    ["realworld", "realworld2", "realworld3", "realworld4", "realworld5", "published", "published2",
     "published3", "published4", "variants"],
)
def test_each_set_is_large_enough_with_live_expected_terms(
    terms: dict[str, dict], name: str, set_name: str
) -> None:
    cases = read_set(set_name, name)
    # realworld3 is what is left of a third set after removing every label the first two hold
    assert len(cases) >= {"realworld3": 30, "realworld4": 90, "realworld5": 120, "published": 120,
                          "published2": 120, "published3": 120, "published4": 120}.get(set_name, 50)
    labels = [case.label for case in cases]
    assert len(labels) == len(set(labels)), "a label listed twice would count twice"
    for case in cases:
        assert case.label.strip() == case.label and case.label
        for term_id in case.expected:
            # exists in the newest packaged version, and not deprecated (load_ontology drops those)
            assert term_id in terms[name], f"{set_name}_{name}: {case.label!r} expects dead {term_id}"


def test_variant_files_are_what_the_generator_writes_today() -> None:
    for name in ONTOLOGIES:
        cases = read_set("variants", name)
        generated = variants_for(name)
        assert [(c.label, next(iter(c.expected)), c.rule) for c in cases] == generated


def test_variants_cover_every_rule() -> None:
    rules = {case.rule for case in read_set("variants", "cl")}
    assert rules == {"plural", "case", "inverted", "mixed", "marker"}
    for name in ("uberon", "mondo"):
        assert {case.rule for case in read_set("variants", name)} == {"plural", "case", "inverted", "mixed"}


def test_real_world_cell_types_are_not_copies_of_ontology_names(terms: dict[str, dict]) -> None:
    """Real-world cell-type labels were written by hand, not lifted from the ontology's names."""
    cases = read_set("realworld", "cl")
    cl = terms["cl"]
    verbatim = [
        case.label for case in cases
        if any(case.label == cl[t].label or case.label in cl[t].synonyms for t in case.expected)
    ]
    assert len(verbatim) <= len(cases) * 0.05


@pytest.mark.parametrize("name", ONTOLOGIES)
def test_the_real_world_sets_share_no_label(name: str) -> None:
    first = {case.label.casefold() for case in read_set("realworld", name)}
    second = {case.label.casefold() for case in read_set("realworld2", name)}
    assert not first & second
    earlier = first | second
    assert not [case.label for case in read_set("realworld3", name) if case.label.casefold() in earlier]


# Labels two curators mapped differently, both defensibly: (ontology, set, label) -> why.
JUDGEMENT_DIFFERENCES = {
    ("cl", "realworld5", "CD16+ monocytes"): "realworld3: CD14-low CD16+ monocyte; realworld5: non-classical",
}


@pytest.mark.parametrize("set_name", ["realworld4", "realworld5"])
@pytest.mark.parametrize("name", ONTOLOGIES)
def test_the_natural_mix_sets_agree_with_the_earlier_ones_and_their_new_part_is_new(
    name: str, set_name: str
) -> None:
    """realworld4 and realworld5 keep labels earlier sets hold (they are natural mixes); where they
    do, they expect the same terms, and `<set>-new` is exactly the rest."""
    in_order = [held_out for held_out in REAL_WORLD_SETS if not held_out.endswith(NEW_SUFFIX)]
    earlier: dict[str, frozenset[str]] = {}
    for held_out in in_order[: in_order.index(set_name)]:
        for case in read_set(held_out, name):
            earlier.setdefault(case.label.casefold(), case.expected)
    cases = read_set(set_name, name)
    shared = [case for case in cases if case.label.casefold() in earlier]
    assert shared, "a natural mix repeats some common labels"
    differing = [
        case.label for case in shared
        if not case.expected & earlier[case.label.casefold()]
        and (name, set_name, case.label) not in JUDGEMENT_DIFFERENCES
    ]
    assert differing == []
    new = read_set(f"{set_name}-new", name)
    assert [case.label for case in new] == [c.label for c in cases if c.label.casefold() not in earlier]
    assert len(new) >= 30
