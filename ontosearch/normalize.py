"""Label normalisation shared by indexing and matching.

The same function turns ontology labels/synonyms into lookup keys at index time and user labels
into keys at query time, so an exact hit only needs string equality on a metadata field (which
works through the read-only proxy with `collection.get(where=...)`). Because both sides go
through the same rules, a rule only has to be consistent, not linguistically perfect: the crude
singular of "diabetes" is "diabete" on both sides.

What a scientist's label differs by from the ontology's wording, and the rule for it:
case and whitespace; hyphens and punctuation ("T-cell", "alpha-beta"); plurals ("T cells");
marker signs ("CD4+" for "CD4-positive", "CD8-" for "CD8-negative"); possessives ("Crohn's");
roman numerals ("type II" / "type 2"); Greek letters ("γδ"); comma inversions
("carcinoma, hepatocellular"); a redundant "cell(s)" suffix ("hepatocyte cells"); atlas spellings
(`split_atlas_spelling`): words joined by underscores ("Endothelial_Venous") or in CamelCase
("SmoothMuscle"), and slash-joined lists ("Monocytes/Macrophages"): separate words.
"""

from __future__ import annotations

import functools
import re
import unicodedata

_GREEK = {
    "α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "ε": "epsilon", "κ": "kappa",
    "λ": "lambda", "μ": "mu", "σ": "sigma", "τ": "tau", "ω": "omega",
}
_ROMAN = {
    "ii": "2", "iii": "3", "iv": "4", "v": "5", "vi": "6", "vii": "7", "viii": "8", "ix": "9", "x": "10",
}
# Words after which a lone "i"/"v"/"x" is a numeral, not a letter ("type I", "complex V").
_NUMBERED = {"type", "class", "grade", "stage", "group", "complex", "phase", "layer", "lamina", "factor"}
# Endings that look plural but are not (or whose singular would collide with another word).
_KEEP_S = ("ss", "us", "is", "os", "as", "ous", "ics", "itis", "osis", "sis")

# "+"/"-" after a marker name, or "pos"/"neg" glued to one ("CD4pos"); never inside plain words.
_MARKER_POS = re.compile(r"(?<=[0-9A-Za-z])(?:\+|\(\+\))|(?<=[0-9A-Z])pos\b")
_MARKER_NEG = re.compile(r"(?<=[0-9A-Za-z])(?:-|\(-\)|\u2212)(?=\s|,|/|\)|$)|(?<=[0-9A-Z])neg\b")
_NON_WORD = re.compile(r"[^0-9a-z]+")
# A CamelCase join of two words: three lower-case letters, then a capitalised word of three or more
# letters ("SmoothMuscle", "EndothelialVenous"). Shorter heads are name prefixes, not words
# ("DiGeorge", "McArdle", "MacDermot"), and capitals before the join are an acronym's
# ("GABAergic", "MALToma", "PEComa"): those stay one word. Checked over the packaged ontologies'
# labels and synonyms (133,000 names), the rule splits 8, all joined words ("CamelHump", "fibrogenicTumor").
_CAMEL_JOIN = re.compile(r"(?<=[a-z]{3})(?=[A-Z][a-z]{2})")
# Words of the lexical channel that say nothing about which term is meant.
_FUNCTION_WORDS = frozenset(
    {"of", "the", "and", "in", "to", "for", "with", "by", "a", "an", "or", "on", "from"}
)


def split_atlas_spelling(text: str) -> str:
    """The label with atlas-style joins written as separate words, everything else unchanged.

    Atlases and portals join the words of a name with underscores ("Endothelial_Venous",
    "T_CD4_Naive") or in CamelCase ("SmoothMuscle"). Slash-joined lists ("Monocytes/Macrophages")
    need no rewrite: a slash separates words in `normalize` (it is punctuation), in
    `lexical_tokens` and in the embedders' tokenizers alike, and kept in the text it still reads as
    the ontologies write their own lists ("megakaryocyte/erythroid progenitor", "L2/3").
    """
    return " ".join(_CAMEL_JOIN.sub(" ", text.replace("_", " ")).split())


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ae"):  # vertebrae, laminae
        return word[:-1]
    if word.endswith("eas") and not word.endswith("creas"):  # areas, but not pancreas
        return word[:-1]
    if len(word) <= 3 or not word.endswith("s") or word.endswith(_KEEP_S):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2]
    return word[:-1]


def expand_markers(text: str) -> str:
    """Spell out marker signs the way CL labels do: "CD4+" -> "CD4-positive", "CD8-" -> "CD8-negative"."""
    text = _MARKER_POS.sub("-positive ", text)
    text = _MARKER_NEG.sub("-negative ", text)
    return " ".join(re.sub(r" +([,/)])", r"\1", text).split())


def _ascii(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    for letter, name in _GREEK.items():
        text = text.replace(letter, f" {name} ").replace(letter.upper(), f" {name} ")
    text = text.replace("’", "'").replace("‐", "-").replace("–", "-")
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


@functools.lru_cache(maxsize=1 << 16)
def normalize(text: str) -> str:
    """The lookup key of a label: lower case, ASCII, markers spelt out, singular words, no punctuation.

    Kept for recent texts: matching normalises each label, its rewrites and their key variants,
    and the lexical channel its words again, so the same strings recur many times per batch.
    """
    return _normalize(split_atlas_spelling(_ascii(text)))


def joined_normalize(text: str) -> str:
    """The lookup key without CamelCase splitting: the key collections built before
    `split_atlas_spelling` store for CamelCase names, tried after `normalize`'s key."""
    return _normalize(_ascii(text))


def lexical_tokens(text: str) -> list[str]:
    """The words the lexical channel indexes and queries: the normalised words without function words.

    Index and query go through this one function, so "Lung Fibroblasts", "fibroblast of lung"
    and "Fibroblast_Lung" share the tokens {fibroblast, lung}.
    """
    return norm_tokens(normalize(text))


def norm_tokens(key: str) -> list[str]:
    """`lexical_tokens` of a text whose `normalize` key is `key` (records store it as `norm`)."""
    return [word for word in key.split() if word not in _FUNCTION_WORDS]


def _normalize(text: str) -> str:
    text = expand_markers(text)
    text = re.sub(r"'s\b", "", text.lower())
    words = _NON_WORD.sub(" ", text).split()
    out: list[str] = []
    for word in words:
        if word in _ROMAN and (len(word) > 1 and word != "x" or (out and out[-1] in _NUMBERED)):
            word = _ROMAN[word]
        elif word == "i" and out and out[-1] in _NUMBERED:
            word = "1"
        out.append(_british_to_us(_singular(word)))
    return " ".join(out)


def _british_to_us(word: str) -> str:
    # oesophagus/esophagus, caecum/cecum, leukaemia/leukemia, coeliac/celiac, tumour/tumor; not
    # in short words, where "oe"/"ae" is no British spelling ("toe", "OEC", "AEC" would become
    # "te", "ec", "ec" and collide with other abbreviations)
    if len(word) >= 5:
        word = word.replace("ae", "e").replace("oe", "e")
    return word[:-3] + "or" if word.endswith("our") and len(word) > 5 else word


# Latin plurals of a head noun, tried as alternatives: one rule cannot tell "testes" (testis)
# from "bases" (base), but the wrong alternative simply finds nothing.
_LATIN_PLURALS = (("ices", "ex"), ("ices", "ix"), ("es", "is"), ("i", "us"), ("a", "um"), ("a", "on"))


def latin_singulars(text: str) -> list[str]:
    """The text with its last word turned from a Latin plural into candidate singulars."""
    words = text.split()
    if not words or len(words[-1]) < 5:
        return []
    head = words[-1]
    out = []
    for plural, singular in _LATIN_PLURALS:
        if head.lower().endswith(plural):
            out.append(" ".join(words[:-1] + [head[: -len(plural)] + singular]))
    return out


def uninvert(text: str) -> str | None:
    """Undo one comma inversion ("carcinoma, hepatocellular" -> "hepatocellular carcinoma"), or None."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 2 or not all(parts):
        return None
    return f"{parts[1]} {parts[0]}"


def query_keys(text: str, cell_suffix: bool = False, disease_suffix: bool = False) -> list[str]:
    """Lookup keys to try for a user label, most literal first.

    The label itself and its comma inversion undone; with `cell_suffix` (cell types) also with a
    trailing "cell(s)" (or "neuron(s)") dropped, or "cell" added: "hepatocyte cells" is
    "hepatocyte", "L2/3 IT neurons" is "L2/3 IT", "Schwann" may mean
    "Schwann cell"; with `disease_suffix` a bare eponym ("Alzheimer's") also as "... disease".
    """
    keys: list[str] = []

    def add(key: str) -> None:
        if key and key not in keys:
            keys.append(key)

    bases = [normalize(text)]
    inverted = uninvert(text)
    if inverted:
        bases.append(normalize(inverted))
    for base in bases:
        add(base)
    if _CAMEL_JOIN.search(text):
        add(joined_normalize(text))  # the CamelCase name as collections built before the split store it
    for variant in latin_singulars(inverted or text):
        add(normalize(variant))
    if disease_suffix and re.search(r"['’]s\s*$", text):
        add(normalize(text + " disease"))  # "Alzheimer's" is Alzheimer's disease
    if not cell_suffix:
        return keys
    for base in bases:
        words = base.split()
        # "cells", and for atlas subclass names "neurons" ("L2/3 IT neurons", "Pvalb neurons")
        if len(words) > 1 and words[-1] in {"cell", "neuron"} and len(" ".join(words[:-1])) >= 4:
            add(" ".join(words[:-1]))
    for base in bases:
        if base and not base.endswith("cell"):
            add(base + " cell")
    return keys


def embedding_text(text: str) -> str:
    """The text to embed for a user label: whitespace collapsed, markers spelt out, inversion undone.

    Kept close to the original wording (case and plurals do not matter to the embedders), but
    "CD4+" and "carcinoma, hepatocellular" are rewritten as the ontologies write them.
    """
    text = split_atlas_spelling(_ascii(text))
    inverted = uninvert(text) if "," in text else None
    if inverted and not re.search(r"(?i)positive|negative|\+", text):
        text = inverted
    return expand_markers(text)


# Rewrites for labels written the way sample sheets and atlases write them, tried after the label
# itself: the rewritten label gives more lookup keys and is what gets embedded.
# Specimen words around a tissue name ("Liver biopsy", "Bone marrow aspirate", "Renal tissue").
_SPECIMEN = {"biopsy", "biopsies", "tissue", "tissues", "sample", "samples", "specimen", "specimens",
             "aspirate", "aspirates", "resection", "resections"}
# Life-stage words that atlases and epigenome portals put before an organ ("Fetal Heart", "Adult
# Liver"): Uberon's terms are stage-neutral (a sample's stage is recorded apart from its tissue), so
# a leading one is dropped like a specimen word. Not "embryonic": Uberon names embryonic structures.
_LIFE_STAGE = {"fetal", "foetal", "adult", "neonatal", "newborn", "infant", "pediatric", "paediatric",
               "juvenile"}
# An organ adjective left alone once the specimen word is gone -> the organ's name.
_ORGAN_ADJECTIVES = {
    "renal": "kidney", "hepatic": "liver", "splenic": "spleen", "thymic": "thymus", "ileal": "ileum",
    "rectal": "rectum", "colonic": "colon", "gastric": "stomach", "pulmonary": "lung", "cardiac": "heart",
    "endometrial": "endometrium", "cutaneous": "skin", "oesophageal": "esophagus", "esophageal": "esophagus",
    "pancreatic": "pancreas", "duodenal": "duodenum", "jejunal": "jejunum", "cecal": "cecum",
    "caecal": "cecum", "placental": "placenta", "tonsillar": "tonsil", "synovial": "synovium",
    "prostatic": "prostate", "ovarian": "ovary", "testicular": "testis", "uterine": "uterus",
    "cervical": "uterine cervix", "vaginal": "vagina", "adrenal": "adrenal gland", "mammary": "breast",
}
# Shorthand for a cell type's head noun in atlas cluster names ("CD14+ Mono", "M2 macs").
_CELL_HEADS = {
    "mono": "monocyte", "monos": "monocyte", "mac": "macrophage", "macs": "macrophage",
    "macro": "macrophage", "macros": "macrophage", "nk": "natural killer cell", "cm": "cardiomyocyte",
    "cms": "cardiomyocyte", "ec": "endothelial cell", "ecs": "endothelial cell", "smc": "smooth muscle cell",
    "smcs": "smooth muscle cell", "fibro": "fibroblast", "fibros": "fibroblast", "neut": "neutrophil",
    "neuts": "neutrophil", "dc": "dendritic cell", "dcs": "dendritic cell",
}
_PARENTHETICAL = re.compile(r"\s*\(([^()]*)\)\s*")
_MARKERISH = re.compile(r"[+\u2212-]\s*$|\b(?:pos|neg|hi|lo|high|low)\b|^[A-Z0-9]{2,}[+-]?$")


# A parenthetical naming a year cites where a label comes from ("Ewing Sarcoma (Institut Curie,
# Cancer Discov 2014)"): it is dropped, not moved in front like a site.
_CITATION = re.compile(r"\b(?:1[89]|20)\d{2}\b")


def _listed_names(text: str) -> list[str]:
    """The names of a label that lists one thing's names separated by semicolons, in order; empty
    when it lists fewer than two.

    Registries write a condition's names as one string that way: OMIM's titles give the name, then
    the symbol ("CHARCOT-MARIE-TOOTH DISEASE, TYPE 1A; CMT1A"), and ClinVar, MedGen and GWAS
    Catalog join alternative names of one trait with "; ". Each name is then looked up as a label
    of its own, the first (the registry's preferred name) first. The whole label is still tried
    before its rewrites, so a name the ontology itself writes with a semicolon (MONDO keeps OMIM
    titles as synonyms: "immunodeficiency 47; IMD47") hits as it is; a semicolon inside brackets
    is part of a name ("t(8;22)", "[Vc; V3]") and splits nothing.
    """
    if ";" not in text:
        return []
    names, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(0, depth - 1)
        elif char == ";" and depth == 0:
            names.append(text[start:index])
            start = index + 1
    names.append(text[start:])
    names = [" ".join(name.split()) for name in names]
    names = [name for name in names if name]
    return names if len(names) > 1 else []


_AND = re.compile(r"\s+and\s+", re.IGNORECASE)


def _conjoined_sites(text: str) -> list[str]:
    """The sites of a registry's site group, in order ("Lung and Bronchus", "Nose, Nasal Cavity and
    Middle Ear"); empty when the label joins nothing with "and" outside brackets."""
    if not _AND.search(text) or any(char in text for char in "()[]"):
        return []
    parts = [part.strip() for piece in _AND.split(text) for part in piece.split(",")]
    parts = [part for part in parts if part]
    return parts if len(parts) > 1 else []


def rewrite_label(text: str, ontology: str | None = None) -> list[str]:
    """The label as the ontology would write it, for labels in sample-sheet or atlas style, best
    first; empty when no rule applies.

    "Club cells (SCGB1A1+)" -> "Club cells" (a marker in parentheses); "Stellate cells (liver)" ->
    "liver Stellate cells"; GTEx style "Artery - Tibial" -> "Tibial Artery", then "Tibial", and
    "Skin - Sun Exposed (Lower leg)" also -> "Lower leg Skin", "Lower leg"; for tissues a specimen
    word and a leading life-stage word are dropped ("Fetal Heart" -> "Heart"), a lone organ
    adjective named ("Renal tissue" -> "kidney"), and a registry's site group is each site in turn
    ("Lung and Bronchus" -> "Lung", "Bronchus"); for cell types a shorthand head noun is spelt out
    ("CD14+ Mono" -> "CD14+ monocyte"). A semicolon list of names is each name in turn, with its
    own rewrites (`_listed_names`), and a parenthetical that names a year is a citation, dropped.
    """
    original = " ".join(text.split())
    names = _listed_names(original) or (_conjoined_sites(original) if ontology == "uberon" else [])
    if names:
        listed: list[str] = []
        for name in names:
            listed += [name, *rewrite_label(name, ontology)]
        return [name for name in dict.fromkeys(listed) if name != original]
    out = split_atlas_spelling(original)
    gtex = out.count(" - ") == 1
    sites: list[str] = []

    def parenthetical(match: re.Match[str]) -> str:
        inner = match.group(1).strip()
        if not inner or _MARKERISH.search(inner) or _CITATION.search(inner):
            return " "
        if gtex:
            sites.append(inner)
            return " "
        return " \x00" + inner + "\x00 "

    if "(" in out:
        out = _PARENTHETICAL.sub(parenthetical, out)
        moved = re.findall("\x00([^\x00]*)\x00", out)
        out = " ".join(re.sub("\x00[^\x00]*\x00", " ", out).split())
        if moved and out:
            out = " ".join(moved) + " " + out
    variants = [out]
    if gtex:
        left, right = (part.strip() for part in out.split(" - "))
        variants = [f"{right} {left}", right] if left and right else variants
        # GTEx's parenthetical names the sampling site ("Skin - Sun Exposed (Lower leg)" -> "Lower
        # leg Skin"); tried last, since it can also be the wider region ("(basal ganglia)").
        if left:
            variants += [part for site in sites for part in (f"{site} {left}", site)]
    rewritten = []
    nouns: list[str] = []
    for variant in variants:
        words = variant.split()
        if ontology == "uberon":
            kept = [word for word in words if word.lower() not in _SPECIMEN]
            if len(kept) > 1 and kept[0].lower() in _LIFE_STAGE:
                kept = kept[1:]
            specimen = bool(kept) and len(kept) < len(words)
            words = kept if specimen else words
            if len(words) == 1 and words[0].lower() in _ORGAN_ADJECTIVES:
                words = _ORGAN_ADJECTIVES[words[0].lower()].split()
            elif specimen and len(words) == 1 and len(words[0]) > 5 and words[0].lower().endswith("al"):
                # Other lone adjectives in "-al" name their part by a regular Latin noun
                # ("Decidual tissue" -> decidua, "Peritoneal biopsy" -> peritoneum); tried last.
                adjective = words[0].lower()
                nouns += [adjective[:-1], adjective[:-2] + "um"]
        if ontology == "cl" and words:
            last = words[-1].lower()
            if last in _CELL_HEADS and (len(words) > 1 or last not in {"nk", "dc", "dcs", "ec", "ecs"}):
                words = words[:-1] + _CELL_HEADS[last].split()
        candidate = " ".join(words)
        if candidate and candidate != original and candidate not in rewritten:
            rewritten.append(candidate)
    return rewritten + [noun for noun in dict.fromkeys(nouns) if noun not in rewritten]


# Words an initialism skips ("head and neck squamous cell carcinoma" -> HNSCC).
_SKIP_IN_INITIALISM = {"of", "the", "and", "in", "to", "for", "with", "by", "a", "an", "or"}
INITIALISM_MIN, INITIALISM_MAX = 2, 8


def initialisms(text: str) -> tuple[str, str]:
    """The initialism of a multi-word name, and the same without a final "cell": ("opc", "op").

    Scientists abbreviate names by their initials ("OPC", "HSC", "COPD", "DLBCL"), and some
    abbreviations leave out "cell" ("MAIT cells", "RPE cells"). Numbers are kept whole ("T2D").
    Empty strings when the name has a single word or the initialism is implausibly short/long.
    """
    words = _NON_WORD.sub(" ", _ascii(text).lower()).split()
    words = [word for word in words if word not in _SKIP_IN_INITIALISM]
    if len(words) < 2:
        return "", ""
    letters = [word if word.isdigit() else word[0] for word in words]
    full = "".join(letters)
    short = "".join(letters[:-1]) if words[-1] in {"cell", "cells"} and len(words) > 2 else ""

    def plausible(value: str) -> str:
        return value if INITIALISM_MIN <= len(value) <= INITIALISM_MAX else ""

    return plausible(full), plausible(short)


def abbreviation_key(text: str) -> str | None:
    """The abbreviation a user label may be ("OPCs" -> "opc", "MAIT cells" -> "mait"), or None.

    Only a single short token (after dropping plurals and a trailing "cell") that is written like
    an abbreviation counts: two capitals ("OPC"), letters and digits ("T2D") or no vowel ("Tfh").
    Plain words ("skin", "flu") are not initialisms, whatever letters they share with one.
    """
    text = split_atlas_spelling(text)
    words = normalize(text).split()
    if len(words) == 2 and words[-1] == "cell":
        words = words[:1]
    if len(words) != 1:
        return None
    token = words[0]
    first = text.split()[0]
    if re.fullmatch(r"[A-Za-z0-9]*[A-Z0-9]S?", first):
        # A capital final S is a letter of the abbreviation ("RRMS", "ALS"), not a plural:
        # plurals of abbreviations are written with a small s ("OPCs", "DCs").
        token = first.lower()
    elif re.fullmatch(r"[A-Za-z0-9]*[A-Z0-9]s", first):
        token = first[:-1].lower()
    if not (INITIALISM_MIN <= len(token) <= 6) or not any(ch.isalpha() for ch in token):
        return None
    raw = re.sub(r"(?<=[A-Z0-9])s$", "", first)
    letters = [ch for ch in raw if ch.isalpha()]
    written_as_abbreviation = (
        sum(ch.isupper() for ch in letters) >= 2
        or any(ch.isdigit() for ch in raw)
        or not any(ch.lower() in "aeiouy" for ch in letters)
    )
    return token if written_as_abbreviation else None
