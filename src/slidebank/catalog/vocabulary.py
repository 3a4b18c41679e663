"""Small code tables for the coded attributes of MetaFleX (SNOMED CT, scheme designator "SCT").

Submitters write "rat", "H&E" or "FFPE"; the catalog stores a display name plus the
(code, scheme, meaning) triple that BIGPICTURE and DICOM expect, so exports are coded and search
facets group synonyms together. Codes come from the DICOM context groups that list them:
CID 7454 (species), CID 8112 (stains), CID 8114 (fixatives), CID 8115 (embedding media),
CID 8103 (specimen types) and the CID 4 / 6204 anatomic regions; the staining procedures are the
SNOMED CT procedures used by pathology FHIR profiles.

A value not in a table is kept as free text with no code — never rejected — except `sex`, a closed
set, which `Vocabulary.normalise(strict=True)` refuses so that a sidecar typo is caught early.
Species is open (zebrafish or cynomolgus monkeys are legitimate), but its synonyms normalise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

SNOMED = "SCT"


@dataclass(frozen=True)
class Code:
    """A coded value, as MetaFleX's CodeType: CODE, SCHEME, MEANING."""

    code: str
    scheme: str
    meaning: str

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "scheme": self.scheme, "meaning": self.meaning}


@dataclass(frozen=True)
class Term:
    """What the catalog stores for one coded attribute: a display name and, when known, its code."""

    name: str
    code: Code | None = None

    def to_json(self) -> dict[str, str | None]:
        return {
            "name": self.name,
            "code": self.code.code if self.code else None,
            "scheme": self.code.scheme if self.code else None,
            "meaning": self.code.meaning if self.code else None,
        }


@dataclass(frozen=True)
class Entry:
    """One row of a code table: the display name, its code and the spellings that mean it."""

    name: str
    code: Code | None
    synonyms: tuple[str, ...] = ()

    @property
    def term(self) -> Term:
        return Term(self.name, self.code)

    @property
    def coded_spellings(self) -> tuple[str, ...]:
        """Code meanings are spellings too ("Biopsy sample" means biopsy)."""
        return (self.code.meaning,) if self.code else ()


@dataclass(frozen=True)
class SpeciesEntry(Entry):
    """A species also carries its NCBI Taxonomy id, the identifier research data sets use."""

    ncbi_taxon: int | None = None


@dataclass(frozen=True)
class StainEntry(Entry):
    """A stain: its staining procedure code (`code`) and the coded substances it uses.

    MetaFleX describes a staining either by procedure or by its list of stains; we keep both so an
    export can choose. Immunohistochemical markers have a procedure but no substance code here.
    """

    substances: tuple[Code, ...] = ()
    kind: str = "chemical"  # "chemical" or "immunohistochemistry"

    @property
    def coded_spellings(self) -> tuple[str, ...]:
        """A single-substance stain is also spelled by its substance ("giemsa stain"), not its procedure."""
        return (self.substances[0].meaning,) if len(self.substances) == 1 else ()


class UnknownTermError(ValueError):
    """A value outside a closed vocabulary (only `sex` is closed)."""

    def __init__(self, attribute: str, value: str, expected: Iterable[str]) -> None:
        self.attribute = attribute
        self.value = value
        self.expected = tuple(expected)
        super().__init__(f"unknown {attribute} {value!r}; expected one of {', '.join(self.expected)}")


def normalise_key(value: str) -> str:
    """The form used to compare spellings: case-folded, '_' as space, whitespace collapsed."""
    return " ".join(value.casefold().replace("_", " ").split())


def clean_text(value: str) -> str:
    """Free text as stored: stripped, internal whitespace collapsed, NUL characters removed."""
    return " ".join(value.replace("\x00", "").split())


@dataclass(frozen=True)
class Vocabulary:
    """A code table for one MetaFleX attribute tag, with synonym lookup."""

    attribute: str
    entries: tuple[Entry, ...]
    closed: bool = False
    _index: dict[str, Entry] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for entry in self.entries:
            for spelling in (entry.name, *entry.synonyms, *entry.coded_spellings):
                key = normalise_key(spelling)
                existing = self._index.get(key)
                if existing is not None and existing is not entry:
                    raise ValueError(f"{self.attribute}: {spelling!r} is ambiguous")
                self._index[key] = entry

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(entry.name for entry in self.entries)

    def lookup(self, value: str | None) -> Entry | None:
        """The entry a spelling means, or None when the table does not know it."""
        if value is None:
            return None
        return self._index.get(normalise_key(value))

    def normalise(self, value: str | None, *, strict: bool = False) -> Term | None:
        """Known spellings become their coded term; others stay free text (or raise when strict)."""
        if value is None:
            return None
        text = clean_text(value)
        if not text:
            return None
        entry = self.lookup(text)
        if entry is not None:
            return entry.term
        if strict and self.closed:
            raise UnknownTermError(self.attribute, text, self.names)
        return Term(text, None)

    def display_name(self, value: str) -> str:
        """The facet value a search filter means: "rat" → "Rattus norvegicus", unknown text as is."""
        entry = self.lookup(value)
        return entry.name if entry else clean_text(value)


def _sct(code: str, meaning: str) -> Code:
    return Code(code, SNOMED, meaning)


SPECIES = Vocabulary(
    "animal_species",
    (
        SpeciesEntry(
            "Homo sapiens",
            _sct("337915000", "Homo sapiens"),
            ("human", "humans", "h. sapiens", "homo sapiens sapiens"),
            9606,
        ),
        SpeciesEntry(
            "Rattus norvegicus",
            _sct("371565004", "Rattus norvegicus"),
            ("rat", "rats", "brown rat", "norway rat", "r. norvegicus", "laboratory rat"),
            10116,
        ),
        SpeciesEntry(
            "Mus musculus",
            _sct("447612001", "Mus musculus"),
            ("mouse", "mice", "house mouse", "m. musculus", "laboratory mouse"),
            10090,
        ),
        SpeciesEntry(
            "Canis lupus familiaris",
            _sct("448771007", "Canis lupus familiaris"),
            ("dog", "dogs", "canine", "canis familiaris", "beagle"),
            9615,
        ),
        SpeciesEntry(
            "Sus scrofa",
            _sct("78678003", "Sus scrofa"),
            ("pig", "pigs", "swine", "porcine", "minipig", "mini pig", "sus scrofa domesticus"),
            9823,
        ),
        SpeciesEntry(
            "Oryctolagus cuniculus",
            _sct("36571002", "Oryctolagus cuniculus"),
            ("rabbit", "rabbits", "european rabbit"),
            9986,
        ),
        SpeciesEntry("Cavia porcellus", _sct("125076001", "Cavia porcellus"), ("guinea pig", "guinea pigs"), 10141),
        SpeciesEntry(
            "Callithrix jacchus", _sct("406733009", "Callithrix jacchus"), ("marmoset", "common marmoset"), 9483
        ),
        SpeciesEntry("Felis catus", _sct("448169003", "Felis catus"), ("cat", "cats", "feline"), 9685),
        SpeciesEntry("Equus caballus", _sct("35354009", "Equus caballus"), ("horse", "horses", "equine"), 9796),
        SpeciesEntry("Ovis aries", _sct("125099002", "Ovis aries"), ("sheep", "ovine"), 9940),
        SpeciesEntry("Capra hircus", _sct("125097000", "Capra hircus"), ("goat", "goats", "caprine"), 9925),
        SpeciesEntry("Bos taurus", _sct("34618005", "Bos taurus"), ("cattle", "cow", "cows", "bovine"), 9913),
        SpeciesEntry("Mustela putorius furo", _sct("449310008", "Mustela putorius furo"), ("ferret", "ferrets"), 9669),
    ),
)

SEX = Vocabulary(
    "sex",
    (
        Entry("female", _sct("248152002", "Female"), ("f", "females")),
        Entry("male", _sct("248153007", "Male"), ("m", "males")),
        Entry("unknown", _sct("261665006", "Unknown"), ("u", "unk", "not known", "unspecified", "undetermined")),
    ),
    closed=True,
)

ANATOMICAL_SITES = Vocabulary(
    "anatomical_site",
    (
        Entry("liver", _sct("10200004", "Liver"), ("hepar",)),
        Entry("kidney", _sct("64033007", "Kidney"), ("kidneys", "renal")),
        Entry("lung", _sct("39607008", "Lung"), ("lungs", "pulmonary")),
        Entry("breast", _sct("76752008", "Breast"), ("breasts",)),
        Entry("colon", _sct("71854001", "Colon"), ()),
        Entry("rectum", _sct("34402009", "Rectum"), ()),
        Entry("stomach", _sct("69695003", "Stomach"), ("gastric",)),
        Entry("small intestine", _sct("30315005", "Small intestine"), ("small bowel",)),
        Entry("esophagus", _sct("32849002", "Esophagus"), ("oesophagus",)),
        Entry("pancreas", _sct("15776009", "Pancreas"), ()),
        Entry("spleen", _sct("78961009", "Spleen"), ()),
        Entry("heart", _sct("80891009", "Heart"), ("cardiac",)),
        Entry("brain", _sct("12738006", "Brain"), ()),
        Entry("skin", _sct("39937001", "Skin"), ()),
        Entry("prostate", _sct("41216001", "Prostate"), ("prostate gland",)),
        Entry("urinary bladder", _sct("89837001", "Urinary bladder"), ("bladder",)),
        Entry("thyroid gland", _sct("69748006", "Thyroid"), ("thyroid",)),
        Entry("lymph node", _sct("59441001", "Lymph node"), ("lymph nodes",)),
        Entry("adrenal gland", _sct("23451007", "Adrenal gland"), ("adrenal", "adrenal glands")),
        Entry("testis", _sct("40689003", "Testis"), ("testes", "testicle")),
        Entry("ovary", _sct("15497006", "Ovary"), ("ovaries",)),
        Entry("uterus", _sct("35039007", "Uterus"), ()),
        Entry("cervix uteri", _sct("71252005", "Cervix uteri"), ("cervix", "uterine cervix")),
        Entry("bone marrow", _sct("14016003", "Bone marrow"), ()),
    ),
)

SPECIMEN_TYPES = Vocabulary(
    "specimen_type",
    (
        Entry("biopsy", _sct("258415003", "Biopsy sample"), ("biopsy sample", "biopsy specimen")),
        Entry("tissue specimen", _sct("119376003", "Tissue specimen"), ("tissue",)),
        Entry("gross specimen", _sct("430861001", "Gross specimen"), ()),
        Entry("smear", _sct("258433009", "Smear sample"), ("smear sample",)),
        Entry("body fluid", _sct("309051001", "Body fluid sample"), ("body fluid sample", "fluid")),
    ),
)

FIXATION_TYPES = Vocabulary(
    "fixation_type",
    (
        Entry("formalin", _sct("431510009", "Formalin"), ("formol", "formaldehyde solution")),
        Entry(
            "neutral buffered formalin",
            _sct("434162003", "Neutral Buffered Formalin"),
            ("nbf", "10% nbf", "10% neutral buffered formalin", "buffered formalin"),
        ),
        Entry("Bouin's fluid", _sct("433474002", "Bouin's fluid"), ("bouin", "bouins", "bouin's", "bouin solution")),
        Entry("Carnoy's fluid", _sct("433338005", "Carnoy's fluid"), ("carnoy", "carnoys", "carnoy's")),
        Entry("Helly's fluid", _sct("433471005", "Helly's fluid"), ("helly", "hellys")),
    ),
)

BLOCK_PREPARATIONS = Vocabulary(
    "block_preparation",
    (
        Entry(
            "paraffin",
            _sct("311731000", "Paraffin wax"),
            ("paraffin wax", "ffpe", "paraffin embedded", "paraffin-embedded"),
        ),
        Entry(
            "frozen",
            _sct("433469005", "Tissue freezing medium"),
            ("oct", "cryo", "cryosection", "frozen section", "optimal cutting temperature compound"),
        ),
        Entry("epoxy resin", _sct("65345002", "Epoxy resin"), ("epoxy",)),
        Entry("acrylic resin", _sct("261712009", "Acrylic resin"), ("acrylic", "methacrylate")),
        Entry("agar", _sct("10249006", "Agar"), ()),
        Entry("plastic", _sct("61088005", "Plastic"), ()),
    ),
)

EXTRACTION_METHODS = Vocabulary(
    "extraction_method",
    (
        Entry("biopsy", _sct("86273004", "Biopsy"), ()),
        Entry("excision", _sct("65801008", "Excision"), ("resection", "surgical excision")),
    ),
)

STAINING_PROCEDURE = _sct("127790008", "Staining")
HE_PROCEDURE = _sct("104210008", "Hematoxylin and eosin stain method")
IHC_PROCEDURE = _sct("117617002", "Immunohistochemistry procedure")
HEMATOXYLIN = _sct("12710003", "hematoxylin stain")
EOSIN = _sct("36879007", "water soluble eosin stain")


def _chemical(name: str, substance: Code, synonyms: tuple[str, ...]) -> StainEntry:
    return StainEntry(name, STAINING_PROCEDURE, synonyms, substances=(substance,))


def _ihc(name: str, synonyms: tuple[str, ...]) -> StainEntry:
    return StainEntry(name, IHC_PROCEDURE, synonyms, kind="immunohistochemistry")


STAINS = Vocabulary(
    "staining",
    (
        StainEntry(
            "H&E",
            HE_PROCEDURE,
            (
                "he",
                "h e",
                "h+e",
                "h and e",
                "hne",
                "hematoxylin and eosin",
                "haematoxylin and eosin",
                "hematoxylin eosin",
                "haematoxylin eosin",
                "hematoxylin & eosin",
                "haematoxylin & eosin",
                "hematoxylin-eosin",
                "haematoxylin-eosin",
            ),
            substances=(HEMATOXYLIN, EOSIN),
        ),
        _chemical(
            "PAS", _sct("255808002", "periodic acid Schiff stain"), ("periodic acid schiff", "periodic acid-schiff")
        ),
        _chemical(
            "trichrome", _sct("406989007", "trichrome stain"), ("masson trichrome", "masson's trichrome", "masson")
        ),
        _chemical("Giemsa", _sct("373646006", "giemsa stain"), ()),
        _chemical("Congo red", _sct("45106005", "Congo red stain"), ()),
        _chemical("Van Gieson", _sct("406957003", "Van Gieson stain"), ("vg", "elastic van gieson", "evg")),
        _chemical(
            "Prussian blue", _sct("406452004", "Prussian blue stain"), ("perls", "perls' prussian blue", "perl's")
        ),
        _chemical("Alcian blue", _sct("4656000", "alcian blue 8GX stain"), ("ab",)),
        _chemical("toluidine blue", _sct("29522004", "toluidine blue stain"), ()),
        _chemical("oil red O", _sct("40808006", "oil red O stain"), ("oro",)),
        _chemical("Sudan black B", _sct("36572009", "Sudan black B stain"), ()),
        _chemical("Luxol fast blue", _sct("406958008", "luxol fast blue stain"), ("lfb",)),
        _chemical("Ziehl-Neelsen", _sct("255813003", "Ziehl-Neelsen stain"), ("zn", "ziehl neelsen", "acid fast")),
        _chemical("Gram", _sct("385484003", "gram stain"), ()),
        _chemical("Sirius red", _sct("51567006", "sirius red F3B stain"), ("picrosirius red", "psr")),
        _chemical("silver", _sct("406951002", "silver stain"), ("reticulin", "silver stain")),
        _ihc("Ki-67", ("ki67", "mib-1", "mib1")),
        _ihc("HER2", ("her-2", "erbb2", "her2/neu")),
        _ihc("ER", ("estrogen receptor", "oestrogen receptor")),
        _ihc("PR", ("progesterone receptor", "pgr")),
        _ihc("CD3", ()),
        _ihc("CD20", ()),
        _ihc("cytokeratin", ("pan-cytokeratin", "pancytokeratin", "ae1/ae3")),
    ),
)

# The four statement types and two statuses of BP.observation.xsd's StatementType.
STATEMENT_TYPES = ("Diagnosis", "Macroscopic Description", "Microscopic Description", "Finding")
STATEMENT_STATUSES = ("Summary", "Distinct")
OBSERVER_TYPES = ("Human", "Machine")

# ISO 8601 durations as MetaFleX uses for age_at_extraction: P54Y, P10W, P1Y6M, P3D.
AGE_PATTERN = re.compile(r"^P(?=\d)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?$")


def stain_entry(name: str) -> StainEntry | None:
    """The stain table row for a spelling, typed for the caller (substances, kind)."""
    entry = STAINS.lookup(name)
    return entry if isinstance(entry, StainEntry) else None


def split_stains(value: str | None) -> list[str]:
    """Several stainings on one slide are written "H&E; PAS" ('&' and '+' belong to names)."""
    if not value:
        return []
    parts = [clean_text(part) for part in value.split(";")]
    seen: dict[str, str] = {}
    for part in parts:
        if part:
            seen.setdefault(normalise_key(STAINS.display_name(part)), part)
    return list(seen.values())


def valid_age(value: str) -> bool:
    return bool(AGE_PATTERN.fullmatch(value.strip().upper()))


__all__ = [
    "ANATOMICAL_SITES",
    "BLOCK_PREPARATIONS",
    "EXTRACTION_METHODS",
    "FIXATION_TYPES",
    "OBSERVER_TYPES",
    "SEX",
    "SPECIES",
    "SPECIMEN_TYPES",
    "STAINS",
    "STATEMENT_STATUSES",
    "STATEMENT_TYPES",
    "Code",
    "Entry",
    "SpeciesEntry",
    "StainEntry",
    "Term",
    "UnknownTermError",
    "Vocabulary",
    "clean_text",
    "normalise_key",
    "split_stains",
    "stain_entry",
    "valid_age",
]
