"""How sure a match is: four classes, calibrated on the held-out sets, so a user can set a bar.

A score alone does not say it: every exact hit scores 1.0, yet a hit on a synonym is wrong more
often than a hit on a label (synonyms are shared and loose), and a vector similarity of 0.9 means
little when the next term is as similar. The classes come from the evidence the matcher used and,
for vector matches, from the margin to the next term. Measured with `python bench/accuracy.py`
(the shipped matcher, MiniLM, the five real-world held-out sets of CL, Uberon and MONDO pooled,
1,504 labels; per set and ontology in bench/results/accuracy.md), top-1 precision per class:

    high    0.982 (n=867)  the label is the term's id, or equals its label or a curated alias
                           (after normalisation); an obsolete id's replaced_by term
    good    0.937 (n=446)  equals one of its synonyms, or is an initialism of its label/synonym
    medium  0.920 (n=113)  vector match at least VECTOR_GAP more similar than the next term, or a
                           lexical match (every word of the label in one of the term's names)
    low     0.667 (n=78)   vector match with a nearer runner-up; and every row after the first
                           (a lower-ranked term was the expected one in 1.0% of 6,016 such rows)

The terms an obsolete id's ontology suggests (`consider`, no replacement) are medium at rank 1 and
low after, by definition: no held-out set has such ids. Classes are a property of the evidence,
not of one ontology: per ontology the order holds (bench/results/accuracy.md).
"""

from __future__ import annotations

CONFIDENCE_CLASSES = ("high", "good", "medium", "low")  # strongest first
HIGH, GOOD, MEDIUM, LOW = CONFIDENCE_CLASSES
# A vector match at least this much more similar than the runner-up is medium, else low. Chosen on
# the pooled held-out vector matches of the matcher before its word-overlap channel (n=177, not
# re-measured since: the results files keep no per-row match type): 0.05 split them into 0.907 (n=97)
# and 0.637 precision;
# 0.03 gives 0.847/0.609, 0.08 gives 0.894/0.721 (a smaller medium class, a less distinct low one).
VECTOR_GAP = 0.05
# A lexical match (every word of the label is in one of the term's names, and that placed it) is
# medium whatever its margin: on the held-out sets 13 of 14 were right, most with a near runner-up.
_BY_TYPE = {"id": HIGH, "replaced_id": HIGH, "label": HIGH, "alias": HIGH, "synonym": GOOD,
            "abbreviation": GOOD, "lexical": MEDIUM}
# Measured top-1 precision of each class (above) and of rows after the first: the numeric
# confidence an SSSOM file gives a mapping, so a consumer can weigh it.
CLASS_PRECISION = {HIGH: 0.982, GOOD: 0.937, MEDIUM: 0.920, LOW: 0.667}
LOWER_RANK_PRECISION = 0.010


class ConfidenceError(ValueError):
    """A confidence class that is not one of CONFIDENCE_CLASSES."""


def classify(match_type: str, rank: int, gap: float, suggested: bool = False) -> str:
    """The class of a match: `gap` is its score minus the next term's (1.0 when there is none);
    `suggested` marks an obsolete id's `consider` terms."""
    if rank > 1:
        return LOW
    if suggested:
        return MEDIUM
    if match_type in _BY_TYPE:
        return _BY_TYPE[match_type]
    return MEDIUM if gap >= VECTOR_GAP else LOW


def check_class(name: str) -> str:
    """`name` as a known class (case-insensitive); raises ConfidenceError naming the choices."""
    key = str(name).strip().lower()
    if key not in CONFIDENCE_CLASSES:
        raise ConfidenceError(
            f"unknown confidence class {name!r}; use one of {', '.join(CONFIDENCE_CLASSES)} (strongest first)"
        )
    return key


def at_least(confidence: str, minimum: str) -> bool:
    """Whether `confidence` is `minimum` or stronger; an unknown or empty class counts as low."""
    order = CONFIDENCE_CLASSES
    strength = order.index(confidence) if confidence in order else order.index(LOW)
    return strength <= order.index(minimum)


def precision_of(confidence: str, rank: int) -> float:
    """The measured probability that a row of this class and rank names the expected term."""
    if rank > 1:
        return LOWER_RANK_PRECISION
    return CLASS_PRECISION.get(confidence, CLASS_PRECISION[LOW])
