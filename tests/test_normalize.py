"""Label normalisation: the keys that make exact hits independent of how a label is written."""

from __future__ import annotations

import pytest

from ontosearch.normalize import (
    abbreviation_key,
    embedding_text,
    expand_markers,
    initialisms,
    lexical_tokens,
    normalize,
    query_keys,
    rewrite_label,
    split_atlas_spelling,
    uninvert,
)


@pytest.mark.parametrize(
    ("user", "ontology"),
    [
        ("CD4+ T cells", "CD4-positive T cell"),
        ("T-cells", "T cell"),
        ("  B   CELLS ", "B cell"),
        ("Crohn's disease", "Crohn disease"),
        ("type II pneumocytes", "type 2 pneumocyte"),
        ("γδ T cells", "gamma-delta T cell"),
        ("CD14+, CD16- monocytes", "CD14-positive, CD16-negative monocyte"),
        ("lymph nodes", "lymph node"),
        ("adipocytes", "adipocyte"),
        ("cardiomyopathies", "cardiomyopathy"),
    ],
)
def test_user_spelling_and_ontology_spelling_share_a_key(user: str, ontology: str) -> None:
    assert normalize(user) == normalize(ontology)


@pytest.mark.parametrize(
    ("first", "second"),
    [("hepatocyte", "hepatocytes cell"), ("thigh", "thy"), ("yellow", "yel"),
     ("CD4-positive", "CD4-negative")],
)
def test_different_names_keep_different_keys(first: str, second: str) -> None:
    assert normalize(first) != normalize(second)


def test_words_ending_in_s_that_are_not_plurals_are_kept() -> None:
    assert normalize("diabetes mellitus") == "diabete mellitus"  # same rule on both sides
    assert normalize("psoriasis") == "psoriasis"
    assert normalize("glomerulus") == "glomerulus"


def test_marker_signs_are_spelt_out_but_plain_words_are_untouched() -> None:
    assert expand_markers("CD4+CD25+ Tregs") == "CD4-positive CD25-positive Tregs"
    assert expand_markers("CD8- T cell") == "CD8-negative T cell"
    assert expand_markers("yellow thigh high") == "yellow thigh high"
    assert expand_markers("T-cell") == "T-cell"


def test_comma_inversion_is_undone() -> None:
    assert uninvert("carcinoma, hepatocellular") == "hepatocellular carcinoma"
    assert uninvert("no comma") is None
    assert uninvert("a, b, c") is None
    assert "hepatocellular carcinoma" in query_keys("Carcinoma, Hepatocellular")
    assert embedding_text("carcinoma, hepatocellular") == "hepatocellular carcinoma"
    # a comma between markers is CL's own wording, not an inversion
    assert embedding_text("CD4+, alpha-beta T cell") == "CD4-positive, alpha-beta T cell"


def test_cell_suffix_is_tried_only_for_cell_types() -> None:
    assert query_keys("hepatocyte cells") == ["hepatocyte cell"]
    assert query_keys("hepatocyte cells", cell_suffix=True) == ["hepatocyte cell", "hepatocyte"]
    assert query_keys("L2/3 IT neurons", cell_suffix=True)[:2] == ["l2 3 it neuron", "l2 3 it"]
    assert query_keys("motor neurons", cell_suffix=True)[:2] == ["motor neuron", "motor"]
    assert "schwann cell" in query_keys("Schwann", cell_suffix=True)
    assert "b" not in query_keys("B cells", cell_suffix=True)  # a one-letter key would be noise


def test_initialisms_of_names() -> None:
    assert initialisms("oligodendrocyte precursor cell") == ("opc", "op")
    assert initialisms("mucosal-associated invariant T cell") == ("maitc", "mait")
    assert initialisms("head and neck squamous cell carcinoma") == ("hnscc", "")
    assert initialisms("type 2 diabetes") == ("t2d", "")
    assert initialisms("liver") == ("", "")


@pytest.mark.parametrize(
    ("label", "key"),
    [("OPCs", "opc"), ("MAIT cells", "mait"), ("COPD", "copd"), ("T2D", "t2d"), ("Tfh cells", "tfh"),
     ("B cells", None), ("lung adenocarcinoma", None), ("X", None), ("skin", None), ("flu", None),
     ("Tregs", None), ("RRMS", "rrms"), ("ALS", "als"), ("MS", "ms"), ("DCs", "dc"), ("ILC2s", "ilc2")],
)
def test_abbreviation_key_only_for_single_short_tokens(label: str, key: str | None) -> None:
    assert abbreviation_key(label) == key


@pytest.mark.parametrize(
    ("british", "american"),
    [
        ("oesophagus", "esophagus"),
        ("caecum", "cecum"),
        ("acute lymphoblastic leukaemia", "acute lymphoblastic leukemia"),
        ("coeliac disease", "celiac disease"),
        ("brain tumours", "brain tumor"),
        ("haematopoietic stem cell", "hematopoietic stem cell"),
    ],
)
def test_british_and_american_spellings_share_a_key(british: str, american: str) -> None:
    assert normalize(british) == normalize(american)


def test_short_words_and_abbreviations_keep_their_oe_and_ae() -> None:
    # "toe" is no British "te", and "OEC"/"AEC" are not "EC" (endothelial cell)
    assert [normalize(text) for text in ("toe", "OEC", "AEC", "EC")] == ["toe", "oec", "aec", "ec"]


@pytest.mark.parametrize(
    ("plural", "singular"),
    [("glomeruli", "glomerulus"), ("testes", "testis"), ("bronchi", "bronchus"), ("ganglia", "ganglion"),
     ("vertebrae", "vertebra"), ("kidneys", "kidney"), ("cortices", "cortex")],
)
def test_latin_and_irregular_plurals_reach_the_singular_key(plural: str, singular: str) -> None:
    assert normalize(singular) in query_keys(plural)


def test_a_bare_eponym_is_tried_as_a_disease_for_diseases_only() -> None:
    assert "alzheimer disease" in query_keys("Alzheimer's", disease_suffix=True)
    assert "alzheimer disease" not in query_keys("Alzheimer's")
    assert query_keys("Crohn's disease", disease_suffix=True) == ["crohn disease"]


@pytest.mark.parametrize(
    ("label", "ontology", "rewritten"),
    [
        ("Club cells (SCGB1A1+)", "cl", ["Club cells"]),
        ("Treg (FOXP3+)", "cl", ["Treg"]),
        ("Stellate cells (liver)", "cl", ["liver Stellate cells"]),
        ("CD14+ Mono", "cl", ["CD14+ monocyte"]),
        ("M2 macs", "cl", ["M2 macrophage"]),
        ("CD16+ NK", "cl", ["CD16+ natural killer cell"]),
        ("Artery - Tibial", "uberon", ["Tibial Artery", "Tibial"]),
        ("Brain - Putamen (basal ganglia)", "uberon",
         ["Putamen Brain", "Putamen", "basal ganglia Brain", "basal ganglia"]),
        ("Skin - Sun Exposed (Lower leg)", "uberon",
         ["Sun Exposed Skin", "Sun Exposed", "Lower leg Skin", "Lower leg"]),
        ("Liver biopsy", "uberon", ["Liver"]),
        ("Bone marrow aspirate", "uberon", ["Bone marrow"]),
        ("Renal tissue", "uberon", ["kidney"]),
        ("Ileal biopsy", "uberon", ["ileum"]),
        ("Decidual tissue", "uberon", ["Decidual", "decidua", "deciduum"]),
        ("Peritoneal biopsy", "uberon", ["Peritoneal", "peritonea", "peritoneum"]),
        ("CHARCOT-MARIE-TOOTH DISEASE, TYPE 1A; CMT1A", "mondo",
         ["CHARCOT-MARIE-TOOTH DISEASE, TYPE 1A", "CMT1A"]),
        ("Club cells (SCGB1A1+);  AT2 cells;", "cl", ["Club cells (SCGB1A1+)", "Club cells", "AT2 cells"]),
        ("hallux; digitus primus [I]", "uberon", ["hallux", "digitus primus [I]"]),
        ("Fetal Heart", "uberon", ["Heart"]),
        ("Adult_Kidney tissue", "uberon", ["Kidney"]),
        ("Fetal Renal", "uberon", ["kidney"]),
        ("Lung and Bronchus", "uberon", ["Lung", "Bronchus"]),
        ("Nose, Nasal Cavity and Middle Ear", "uberon", ["Nose", "Nasal Cavity", "Middle Ear"]),
        ("Liver AND intrahepatic bile ducts", "uberon", ["Liver", "intrahepatic bile ducts"]),
        ("Ewing Sarcoma (Institut Curie, Cancer Discov 2014)", "mondo", ["Ewing Sarcoma"]),
        ("Low-Grade Gliomas (UCSF, Science 2014)", "mondo", ["Low-Grade Gliomas"]),
    ],
)
def test_sample_sheet_and_atlas_labels_are_rewritten_as_the_ontologies_write_them(
    label: str, ontology: str, rewritten: list[str]
) -> None:
    assert rewrite_label(label, ontology) == rewritten


@pytest.mark.parametrize(
    ("label", "ontology"),
    [("T cells", "cl"), ("NK", "cl"), ("DCs", "cl"), ("left ventricle", "uberon"), ("tissue", "uberon"),
     ("Liver biopsy", "cl"), ("CD14+ Mono", "uberon"), ("Crohn's disease", "mondo"),
     ("IMD47;", "mondo"), ("; ;", "mondo"), ("Fetal", "uberon"), ("fetal heart", "cl"),
     ("Lung and Bronchus", "cl"), ("and", "uberon")],
)
def test_labels_without_such_forms_are_left_alone(label: str, ontology: str) -> None:
    assert rewrite_label(label, ontology) == []


def test_a_semicolon_inside_brackets_separates_no_names() -> None:
    for label in ("supernumerary der(22)t(8;22) syndrome", "mandibular nerve [Vc; V3]"):
        assert not any(name.endswith(("t(8", "[Vc")) for name in rewrite_label(label, "mondo")), label


@pytest.mark.parametrize(
    ("atlas", "ontology"),
    [
        ("Endothelial_Venous", "endothelial venous"),
        ("T_CD4_Naive", "T CD4 naive"),
        ("SmoothMuscle", "smooth muscle"),
        ("EndothelialVenous cells", "endothelial venous cell"),
        ("Smooth_Muscle_Cells", "smooth muscle cell"),
        ("Monocytes/Macrophages", "monocyte macrophage"),
    ],
)
def test_atlas_joins_are_separate_words(atlas: str, ontology: str) -> None:
    assert normalize(atlas) == normalize(ontology)


@pytest.mark.parametrize("name", ["DiGeorge syndrome", "McArdle disease", "MacDermot-Winter syndrome",
                                  "GABAergic neuron", "MALToma", "PEComa", "iTreg", "IgG plasma cell"])
def test_eponyms_and_acronyms_are_not_split(name: str) -> None:
    assert split_atlas_spelling(name) == name
    assert normalize(name) == normalize(name.lower())


def test_atlas_spellings_are_embedded_as_words() -> None:
    assert embedding_text("SmoothMuscle_Cells") == "Smooth Muscle Cells"
    assert embedding_text("Endothelial_Venous") == "Endothelial Venous"
    assert rewrite_label("Fibroblast_Alveolar", "cl") == ["Fibroblast Alveolar"]
    assert abbreviation_key("OPC_cells") == "opc"


def test_a_camelcase_label_also_tries_the_key_older_collections_store() -> None:
    keys = query_keys("SmoothMuscle")
    assert keys[:2] == ["smooth muscle", "smoothmuscle"]


def test_lexical_tokens_are_the_same_for_index_and_query_spellings() -> None:
    assert set(lexical_tokens("Lung Fibroblasts")) == set(lexical_tokens("fibroblast of lung"))
    assert set(lexical_tokens("Fibroblast_Lung")) == {"fibroblast", "lung"}
    assert lexical_tokens("Monocytes/Macrophages") == ["monocyte", "macrophage"]
    assert lexical_tokens("CD4+ T cells") == ["cd4", "positive", "t", "cell"]
    assert lexical_tokens("the of and") == []
