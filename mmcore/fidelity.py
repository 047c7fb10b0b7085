"""The fidelity checker: reads diagnosis words, malignancy, ABCD findings (mmcore.findings), diameter, age, sex and
site in a free-text note, with negation and hedging, and lists every claim its case contradicts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from mmcore.cases import SITE_MAP, Case
from mmcore.findings import ASYMMETRY_TERMS, BORDER_TERMS, COLOUR_TERMS, FEATURE_TERMS, NETWORK_TERMS, STRUCTURE_TERMS

# ---- the lexicon beyond the findings: every other phrase the checker reads, with what it claims ----

# Diagnosis names and synonyms per HAM10000 class (the `clinical` strategy must never use any of these).
DX_TERMS: dict[str, tuple[str, ...]] = {
    "akiec": (
        "actinic keratosis",
        "actinic keratoses",
        "solar keratosis",
        "solar keratoses",
        "bowen's disease",
        "bowen disease",
        "intraepithelial carcinoma",
        "intra-epithelial carcinoma",
        "carcinoma in situ",
        "squamous cell carcinoma in situ",
        "akiec",
    ),
    "bcc": ("basal cell carcinoma", "basal-cell carcinoma", "basalioma", "rodent ulcer", "bcc"),
    "bkl": (
        "benign keratosis-like lesion",
        "benign keratosis",
        "seborrheic keratosis",
        "seborrhoeic keratosis",
        "seborrheic keratoses",
        "seborrhoeic keratoses",
        "solar lentigo",
        "senile lentigo",
        "lichen planus-like keratosis",
        "lichenoid keratosis",
        "basal cell papilloma",
        "bkl",
    ),
    "df": ("dermatofibroma", "dermatofibromas", "fibrous histiocytoma", "histiocytoma"),
    "mel": ("melanoma", "melanomas", "malignant melanoma", "lentigo maligna", "mel"),
    "nv": (
        "melanocytic nevus",
        "melanocytic naevus",
        "melanocytic nevi",
        "nevus",
        "naevus",
        "nevi",
        "naevi",
        "mole",
        "moles",
        "nv",
    ),
    "vasc": (
        "vascular lesion",
        "angioma",
        "angiomas",
        "cherry angioma",
        "haemangioma",
        "hemangioma",
        "angiokeratoma",
        "pyogenic granuloma",
        "vasc",
    ),
}
# Diagnostic categories of the hierarchy: each names the classes it allows.
CATEGORY_TERMS: dict[str, frozenset[str]] = {
    "melanocytic": frozenset({"mel", "nv"}),
    "non-melanocytic": frozenset({"akiec", "bcc", "bkl", "df", "vasc"}),
    "keratinocytic": frozenset({"akiec", "bcc", "bkl"}),
    "epidermal": frozenset({"akiec", "bcc", "bkl"}),
    "fibrohistiocytic": frozenset({"df"}),
    "fibro-histiocytic": frozenset({"df"}),
    "vascular tumour": frozenset({"vasc"}),
    "keratosis": frozenset({"akiec", "bkl"}),
    "keratoses": frozenset({"akiec", "bkl"}),
    "lentigo": frozenset({"bkl", "mel"}),
}
MALIGNANCY_TERMS: dict[str, str] = {
    "malignant": "malignant",
    "malignancy": "malignant",
    "cancer": "malignant",
    "cancerous": "malignant",
    "carcinoma": "malignant",
    "skin cancer": "malignant",
    "benign": "benign",
    "non-malignant": "benign",
    "nonmalignant": "benign",
    "harmless": "benign",
    "premalignant": "indeterminate",
    "pre-malignant": "indeterminate",
    "precancerous": "indeterminate",
    "pre-cancerous": "indeterminate",
    "indeterminate": "indeterminate",
}
SEX_TERMS: dict[str, str] = {
    "male": "male",
    "man": "male",
    "gentleman": "male",
    "boy": "male",
    "he": "male",
    "his": "male",
    "him": "male",
    "mr": "male",
    "female": "female",
    "woman": "female",
    "lady": "female",
    "girl": "female",
    "she": "female",
    "her": "female",
    "hers": "female",
    "mrs": "female",
    "ms": "female",
}
# Sites: mmcore.cases.SITE_MAP plus a few words of our own; the ambiguous ones need a locative before them.
SITE_TERMS: dict[str, str] = {
    **{k: v for k, v in SITE_MAP.items() if v != "unknown"},
    "upper back": "posterior torso",
    "lower back": "posterior torso",
    "cheek": "head/neck",
    "temple": "head/neck",
    "shin": "lower extremity",
    "calf": "lower extremity",
    "knee": "lower extremity",
    "ankle": "lower extremity",
    "upper arm": "upper extremity",
    "torso": "torso",
    "buttock": "posterior torso",
}
_AMBIGUOUS_SITES = frozenset({"back", "hand", "face", "foot", "head", "arm", "palm", "sole", "lip", "mouth", "leg"})
_LOCATIVE = frozenset(
    {
        "on",
        "of",
        "at",
        "over",
        "the",
        "his",
        "her",
        "their",
        "left",
        "right",
        "upper",
        "lower",
        "site",
        "to",
        "from",
        "dorsal",
        "both",
    }
)

_NEGATION = re.compile(
    r"\b(?:no|not|without|absent|absence of|lacks?|lacking|free of|negative for|neither|nor|"
    r"rules? out|ruled out|excludes?|excluded|denies|none)\b"
)
_POST_NEGATION = re.compile(
    r"^\W*(?:(?:is|are|was|were)\s+)?(?:absent|not seen|not present|not observed|"
    r"not identified|not visible|missing)\b"
)
_HEDGE = re.compile(
    r"\b(?:typically|typical of|usually|often|commonly|classically|characteristically|"
    r"tends? to|may|can|frequently|generally|in general|is known to|are known to|as a rule)\b"
)
_CLAUSE_END = re.compile(r"[;()]|\bbut\b|\bhowever\b|\bwhereas\b|\bwhile\b")
_DIAMETER = re.compile(r"\b(\d+(?:\.\d+)?)\s*(mm|millimet(?:er|re)s?|cm)\b")
_AGES = (
    re.compile(r"\b(\d{1,3})[\s-]*(?:years?|yrs?)[\s-]*old\b", re.I),
    re.compile(r"\baged?\s*:?\s*(\d{1,3})\b", re.I),
    re.compile(r"\b(\d{1,3})\s*(?:yo|y/o|y\.o\.)", re.I),
    re.compile(r"\b(\d{1,3})\s?([MF])\b"),
)
_SEX_SHORTHAND = re.compile(r"\b\d{1,3}\s*(?:yo|y/o|y\.o\.)?\s?([MF])\b")
_DECADES = {
    "twenties": 20,
    "thirties": 30,
    "forties": 40,
    "fifties": 50,
    "sixties": 60,
    "seventies": 70,
    "eighties": 80,
    "nineties": 90,
}
_DECADE = re.compile(r"\bin (?:his|her|their) (\d0s|" + "|".join(_DECADES) + r")\b", re.I)

_KINDS: list[tuple[str, dict]] = [
    ("feature", FEATURE_TERMS),
    ("network", NETWORK_TERMS),
    ("structure", STRUCTURE_TERMS),
    ("asymmetry", ASYMMETRY_TERMS),
    ("border", BORDER_TERMS),
    ("malignancy", MALIGNANCY_TERMS),
    ("colour", COLOUR_TERMS),
    ("sex", SEX_TERMS),
    ("site", SITE_TERMS),
    ("category", {k: k for k in CATEGORY_TERMS}),
    ("dx", {term: dx for dx, terms in DX_TERMS.items() for term in terms}),
]


def _key(phrase: str) -> str:
    return re.sub(r"[\s\-]+", " ", phrase.lower().replace("\u2019", "'")).strip()


_LEXICON: dict[str, tuple[str, str]] = {}
for _kind, _table in _KINDS:  # later kinds win a tie: a diagnosis outranks a colour of the same spelling
    for _phrase, _value in _table.items():
        _LEXICON[_key(_phrase)] = (_kind, _value)
_TERM_RE = re.compile(
    r"(?<![\w-])(?:"
    + "|".join(r"[\s-]+".join(map(re.escape, k.split(" "))) for k in sorted(_LEXICON, key=len, reverse=True))
    + r")(?![\w-])",
    re.I,
)


@dataclass(frozen=True)
class Claim:
    """One thing a note asserts: kind (dx, colour, site, ...), value in our vocabulary, and how it was written."""

    kind: str
    value: str
    text: str
    negated: bool = False
    hedged: bool = False  # in a sentence about what a class typically shows, not about this lesion


@dataclass(frozen=True)
class Contradiction:
    field: str
    note_says: str
    case_has: str


@dataclass
class FidelityResult:
    """score = 1 - contradictions / claims checked (1.0 when nothing could be checked)."""

    score: float
    contradictions: list[Contradiction] = field(default_factory=list)
    checked: int = 0
    unchecked: int = 0

    @property
    def ok(self) -> bool:
        return not self.contradictions

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": round(self.score, 4),
            "checked": self.checked,
            "unchecked": self.unchecked,
            "contradictions": [c.__dict__ for c in self.contradictions],
        }


def read_note(text: str) -> list[Claim]:
    """Every claim in the note, sentence by sentence, with negation and hedging."""
    claims: list[Claim] = []
    for sentence in re.split(r"(?<=[.!?])\s+|\n+", text):
        lower = sentence.lower()
        hedged = bool(_HEDGE.search(lower))
        for m in _TERM_RE.finditer(sentence):
            key = _key(m.group(0))
            kind, value = _LEXICON[key]
            if kind == "site" and key in _AMBIGUOUS_SITES and not _locative_before(lower, m.start()):
                continue
            claims.append(Claim(kind, value, m.group(0), _negated(lower, m.start(), m.end()), hedged))
        for m in _DIAMETER.finditer(lower):
            mm = float(m.group(1)) * (10 if m.group(2) == "cm" else 1)
            claims.append(Claim("diameter", f"{mm:g}", m.group(0), False, hedged))
        for pattern in _AGES:
            for m in pattern.finditer(sentence):
                claims.append(Claim("age", m.group(1), m.group(0), False, hedged))
        for m in _SEX_SHORTHAND.finditer(sentence):
            claims.append(Claim("sex", "male" if m.group(1) == "M" else "female", m.group(0), False, hedged))
        for m in _DECADE.finditer(sentence):
            word = m.group(1).lower()
            decade = _DECADES.get(word) or int(word[:-1])
            claims.append(Claim("age", f"{decade}s", m.group(0), False, hedged))
    return claims


def diagnosis_mentions(text: str) -> list[str]:
    """Diagnosis names, synonyms, categories and malignancy words in the text (what `clinical` must not say)."""
    return [c.text for c in read_note(text) if c.kind in ("dx", "category", "malignancy")]


def check_note(text: str, case: Case) -> FidelityResult:
    """Compare a note with its case: every claim the case can confirm or refute, and what contradicts it."""
    findings = case.findings or {}
    contradictions: list[Contradiction] = []
    checked = unchecked = 0
    borders: list[Claim] = []
    for claim in read_note(text):
        if claim.hedged and claim.kind not in ("dx", "category", "malignancy"):
            unchecked += 1
            continue
        if claim.kind == "border" and not claim.negated:
            borders.append(claim)
            continue
        verdict, case_has = _compare(claim, case, findings)
        if verdict is None:
            unchecked += 1
            continue
        checked += 1
        if not verdict:
            says = f"no {claim.text}" if claim.negated else claim.text
            contradictions.append(Contradiction(claim.kind, says, case_has))
    if borders:
        values = {c.value for c in borders}
        said = "mixed" if "mixed" in values or {"sharp", "indistinct"} <= values else values.pop()
        if "border" in findings:
            checked += 1
            if said != findings["border"]:
                text_said = ", ".join(c.text for c in borders)
                contradictions.append(Contradiction("border", f"{text_said} ({said})", f"border {findings['border']}"))
        else:
            unchecked += len(borders)
    score = 1.0 - len(contradictions) / checked if checked else 1.0
    return FidelityResult(score, contradictions, checked, unchecked)


def _compare(claim: Claim, case: Case, f: dict[str, Any]) -> tuple[bool | None, str]:
    """(True: consistent, False: contradiction, None: the case cannot tell; what the case has)."""
    kind, value, neg = claim.kind, claim.value, claim.negated
    if kind == "dx":
        return (value != case.dx) if neg else (value == case.dx), f"diagnosis {case.dx}"
    if kind == "category":
        inside = case.dx in CATEGORY_TERMS[value]
        return (not inside) if neg else inside, f"diagnosis {case.dx}"
    if kind == "malignancy":
        if case.malignancy not in ("benign", "malignant", "indeterminate"):
            return None, ""
        if neg:
            return case.malignancy != value, case.malignancy
        allowed = {"benign": {"benign"}, "malignant": {"malignant"}, "indeterminate": {"indeterminate", "malignant"}}
        return value in allowed[case.malignancy], case.malignancy
    if kind in ("colour", "structure", "feature"):
        key = {"colour": "colours", "structure": "structures", "feature": "features"}[kind]
        if key not in f:
            return None, ""
        present = set(f[key])
        has = bool(present & {"light brown", "dark brown"}) if value == "brown" else value in present
        return (not has) if neg else has, f"{key}: {', '.join(f[key]) or 'none'}"
    if kind == "network":
        if "structures" not in f:
            return None, ""
        has = "pigment network" in f["structures"] and f.get("network", value) == value
        return (not has) if neg else has, f"network: {f.get('network', 'none')}"
    if kind == "asymmetry":
        if "asymmetry" not in f:
            return None, ""
        a = int(f["asymmetry"])
        if value == "any":
            ok = a >= 1
        elif value == "0":
            ok = a == 0
        else:
            ok = a == int(value)
        return (not ok) if neg else ok, f"asymmetry {a}"
    if kind == "border":  # negated border words ("not sharp")
        if "border" not in f:
            return None, ""
        return f["border"] != value, f"border {f['border']}"
    if kind == "diameter":
        if not f.get("diameter_mm"):
            return None, ""
        d = float(f["diameter_mm"])
        return abs(float(value) - d) <= max(1.5, 0.25 * d), f"diameter {d:g} mm"
    if kind == "age":
        if case.age is None:
            return None, ""
        if value.endswith("s"):
            decade = int(value[:-1])
            return decade - 1 <= case.age <= decade + 10, f"age {case.age:g}"
        return abs(float(value) - case.age) <= 5, f"age {case.age:g}"
    if kind == "sex":
        if case.sex is None:
            return None, ""
        return (value != case.sex) if neg else (value == case.sex), f"sex {case.sex}"
    if kind == "site":
        if case.site in ("", "unknown") or neg:
            return None, ""
        torso = {"torso", "anterior torso", "posterior torso", "lateral torso"}
        ok = value == case.site or ({value, case.site} <= torso and "torso" in (value, case.site))
        return ok, f"site {case.site}" + (f" ({case.site_detail})" if case.site_detail else "")
    return None, ""


def _negated(lower: str, start: int, end: int) -> bool:
    clause_start = 0
    for m in _CLAUSE_END.finditer(lower, 0, start):
        clause_start = m.end()
    if _NEGATION.search(lower, clause_start, start):
        return True
    return bool(_POST_NEGATION.match(lower[end : end + 40]))


def _locative_before(lower: str, start: int) -> bool:
    words = re.findall(r"[a-z]+", lower[max(0, start - 30) : start])
    return bool(words) and words[-1] in _LOCATIVE
