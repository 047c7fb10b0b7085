"""Note strategies M, P1, P2, P3 and clinical (our own wording, after paper 000), and the `notes` command.

Each strategy is a writer registered by name; wording varies (templates, synonyms, order) and is deterministic
given (case, seed). The findings vocabulary is in mmcore.findings, the LLM backend in mmcore.llm, the checker in
mmcore.fidelity.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mmcore.audit import AuditLog
from mmcore.cases import DX_NAMES, Case, CaseStore
from mmcore.fidelity import check_note
from mmcore.findings import COLOURS, DX_HIERARCHY, STRUCTURES
from mmcore.registry import Registry

Writer = Callable[..., str]
STRATEGIES: Registry[Writer] = Registry("note strategy")

# ---- wording: every phrase here is one the fidelity checker reads back to the same value ----

CLASS_WORDS = {
    "akiec": (
        "actinic keratosis / intraepithelial carcinoma",
        "actinic keratosis or Bowen's disease",
        "actinic keratosis",
    ),
    "bcc": ("basal cell carcinoma",),
    "bkl": ("benign keratosis-like lesion", "seborrhoeic keratosis or solar lentigo", "benign keratosis"),
    "df": ("dermatofibroma",),
    "mel": ("melanoma", "malignant melanoma"),
    "nv": ("melanocytic nevus", "nevus", "melanocytic naevus"),
    "vasc": ("vascular lesion", "angioma"),
}
# What each class usually looks like under the dermatoscope (M states it as typical; P2 as if seen).
TYPICAL = {
    "akiec": ("a red pseudonetwork (strawberry pattern)", "white scale", "dotted vessels", "glomerular vessels"),
    "bcc": ("arborizing vessels", "blue-grey ovoid nests", "ulceration", "white structureless areas"),
    "bkl": (
        "milia-like cysts",
        "comedo-like openings",
        "fissures and ridges",
        "a sharp border",
        "a light brown colour",
    ),
    "df": ("a central white patch", "a delicate network at the periphery", "pink and light brown colours"),
    "mel": (
        "asymmetry",
        "several colours including blue-grey and black",
        "an atypical pigment network",
        "streaks",
        "a blue-white veil",
        "regression structures",
    ),
    "nv": ("symmetry", "a regular network", "one or two shades of brown", "regular globules"),
    "vasc": ("red lacunae", "whitish septa", "a sharp border"),
}
COLOUR_WORDS = {
    "white": ("white", "whitish"),
    "red": ("red", "pink", "reddish"),
    "light brown": ("light brown", "tan", "pale brown"),
    "dark brown": ("dark brown", "deep brown"),
    "blue-grey": ("blue-grey", "blue-gray", "grey-blue"),
    "black": ("black",),
}
STRUCTURE_WORDS = {
    "pigment network": ("pigment network", "network"),
    "dots": ("dots", "fine dots", "granules"),
    "globules": ("globules", "clods"),
    "streaks": ("streaks", "pseudopods", "radial streaming"),
    "structureless areas": ("structureless areas", "homogeneous areas"),
    "vessels": ("vessels", "vascular structures"),
    "blue-white veil": ("blue-white veil", "blue-whitish veil"),
    "regression": ("regression structures", "regression", "peppering"),
}
NETWORK_WORDS = {
    "regular": ("regular network", "typical pigment network", "delicate network"),
    "irregular": ("irregular network", "atypical pigment network", "broadened network"),
}
FEATURE_WORDS = {
    "arborizing vessels": ("arborizing vessels", "branching vessels"),
    "dotted vessels": ("dotted vessels", "pinpoint vessels"),
    "glomerular vessels": ("glomerular vessels", "coiled vessels"),
    "comma vessels": ("comma vessels", "comma-shaped vessels"),
    "blue-grey ovoid nests": ("blue-grey ovoid nests", "ovoid nests"),
    "ulceration": ("ulceration", "erosion"),
    "milia-like cysts": ("milia-like cysts", "milia"),
    "comedo-like openings": ("comedo-like openings",),
    "fissures": ("fissures and ridges", "fissures"),
    "lacunae": ("lacunae", "red lacunae", "lagoons"),
    "scale": ("scale", "scaling"),
    "strawberry pattern": ("a strawberry pattern",),
    "central white patch": ("a central white patch", "a central white scar-like patch", "a central white area"),
}
ASYMMETRY_WORDS = {
    0: ("symmetric in both axes", "symmetric", "symmetrical"),
    1: ("asymmetric in one axis", "asymmetrical in one axis"),
    2: ("asymmetric in both axes", "asymmetric in two axes"),
}
BORDER_WORDS = {
    "sharp": ("a sharp border", "a well-defined border", "sharply demarcated edges"),
    "indistinct": ("an indistinct border", "an ill-defined border", "a border that fades into the skin"),
    "mixed": (
        "a mixed border (partly sharp, partly indistinct)",
        "a partly sharp, partly ill-defined border",
        "a border that is sharp in places and ill-defined elsewhere",
    ),
}
NUMBERS = ("no", "one", "two", "three", "four", "five", "six")
_CONFUSED_WITH = {
    "mel": ("nv", "bkl", "bcc"),
    "nv": ("mel", "bkl", "df"),
    "bkl": ("mel", "nv", "akiec"),
    "bcc": ("akiec", "mel", "nv"),
    "akiec": ("bcc", "bkl", "mel"),
    "df": ("nv", "bkl", "bcc"),
    "vasc": ("mel", "bcc", "nv"),
}


def write_note(strategy: str, case: Case, seed: int = 0, **knobs: Any) -> str:
    """The note of one strategy for one case; the same (strategy, case, seed, knobs) always gives the same text."""
    writer = STRATEGIES.get(strategy)
    rng = random.Random(f"{seed}|{strategy}|{case.case_id}")
    return writer(case, rng, **knobs)


def strategy_names() -> list[str]:
    """The registered strategies: M, P1, P2, P3, clinical."""
    return STRATEGIES.names()


# ---- small wording helpers ----


def _listing(rng: random.Random, items: Sequence[str], conj: str = "and") -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    if rng.random() < 0.5:
        return ", ".join(items[:-1]) + f" {conj} " + items[-1]
    return ", ".join(items[:-1]) + f", {conj} " + items[-1]


def _patient(rng: random.Random, case: Case) -> str:
    """'a 60-year-old man', 'a woman aged 45', 'a patient' (only what is known)."""
    young = case.age is not None and case.age < 16
    noun = {
        "male": "boy" if young else rng.choice(("man", "male")),
        "female": "girl" if young else rng.choice(("woman", "female")),
    }.get(case.sex or "", "patient")
    if case.age is None:
        return f"a {noun}"
    age = f"{case.age:g}"
    article = "an" if age.startswith(("8", "11", "18")) else "a"
    return rng.choice((f"{article} {age}-year-old {noun}", f"a {noun} aged {age}"))


def _site(rng: random.Random, case: Case) -> str:
    where = case.site_detail or (case.site if case.site not in ("", "unknown") else "")
    return f"on the {where}" if where else ""


def _metadata_sentence(rng: random.Random, case: Case) -> str:
    who, where = _patient(rng, case), _site(rng, case)
    if where:
        return rng.choice(
            (f"Seen {where} of {who}.", f"The patient is {who}; the lesion is {where}.", f"Lesion {where} in {who}.")
        )
    return rng.choice((f"The patient is {who}.", f"Seen in {who}."))


def _say(rng: random.Random, table: dict, key: Any) -> str:
    return rng.choice(table[key])


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


# ---- the strategies ----


@STRATEGIES.register("M")
def write_m(case: Case, rng: random.Random) -> str:
    """Template from the diagnosis hierarchy: lineage and malignancy, the class, its typical morphology."""
    dx = case.dx
    if dx not in CLASS_WORDS:
        return f"Diagnosis: {DX_NAMES.get(dx, dx)}. {_metadata_sentence(rng, case)}"
    lineage, malignant = DX_HIERARCHY[dx]
    name = rng.choice(CLASS_WORDS[dx])
    head = rng.choice(
        (
            f"Category: {lineage}, {malignant}. Diagnosis: {name}.",
            f"A {malignant} {lineage} lesion: {name}.",
            f"Diagnosis: {name}, within the {malignant} {lineage} lesions.",
        )
    )
    typical = list(TYPICAL[dx])
    rng.shuffle(typical)
    cue = rng.choice(("typically", "usually", "classically", "characteristically"))
    morph = rng.choice(
        (
            f"This diagnosis {cue} shows {_listing(rng, typical[:3])}.",
            f"On dermoscopy it {cue} presents with {_listing(rng, typical[:3])}.",
            f"Its dermoscopic picture {cue} includes {_listing(rng, typical[:3])}.",
        )
    )
    tail = [morph, _metadata_sentence(rng, case)]
    rng.shuffle(tail)
    return " ".join([head, *tail])


def _findings_phrases(rng: random.Random, f: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    if "asymmetry" in f:
        out["asymmetry"] = _say(rng, ASYMMETRY_WORDS, int(f["asymmetry"]))
    if f.get("border") in BORDER_WORDS:
        out["border"] = _say(rng, BORDER_WORDS, f["border"])
    if f.get("colours"):
        out["colours"] = _listing(rng, [_say(rng, COLOUR_WORDS, c) for c in f["colours"] if c in COLOUR_WORDS])
    structures = []
    for s in f.get("structures", []):
        if s == "pigment network" and f.get("network") in NETWORK_WORDS:
            structures.append(_say(rng, NETWORK_WORDS, f["network"]))
        elif s in STRUCTURE_WORDS:
            structures.append(_say(rng, STRUCTURE_WORDS, s))
    structures += [_say(rng, FEATURE_WORDS, x) for x in f.get("features", []) if x in FEATURE_WORDS]
    if structures:
        out["structures"] = _listing(rng, structures)
    if "structures" in f:
        absent = [s for s in STRUCTURES if s not in f["structures"]]
        rng.shuffle(absent)
        if absent and rng.random() < 0.7:
            out["absent"] = _listing(rng, [_say(rng, STRUCTURE_WORDS, s) for s in absent[: rng.randint(1, 3)]], "or")
    if f.get("diameter_mm"):
        out["diameter"] = f"{float(f['diameter_mm']):g} mm"
    return out


@STRATEGIES.register("P1")
def write_p1(case: Case, rng: random.Random) -> str:
    """Structured ABCD report over the fixed vocabulary, from the case's own findings, with class and malignancy."""
    f = case.findings or {}
    ph = _findings_phrases(rng, f)
    name = rng.choice(CLASS_WORDS.get(case.dx, (DX_NAMES.get(case.dx, case.dx),)))
    verdict = f"Diagnosis: {name} ({case.malignancy})." if case.malignancy else f"Diagnosis: {name}."
    meta = _metadata_sentence(rng, case)
    if not ph:  # a real dataset without recorded findings: say only what is known
        return " ".join(
            [rng.choice(("Dermoscopic findings were not recorded.", "No ABCD findings on file.")), verdict, meta]
        )
    if rng.random() < 0.5:  # labelled report
        lines = []
        if "asymmetry" in ph:
            lines.append(f"A: {ph['asymmetry']}.")
        if "border" in ph:
            lines.append(f"B: {ph['border']}.")
        if "colours" in ph:
            n = len(f.get("colours", []))
            lines.append(f"C: {NUMBERS[n] if n < len(NUMBERS) else n} colours ({ph['colours']}).")
        if "structures" in ph:
            lines.append(f"D: {ph['structures']}.")
        if "absent" in ph:
            lines.append(f"No {ph['absent']}.")
        if "diameter" in ph:
            lines.append(f"Diameter {ph['diameter']}.")
        return " ".join([*lines, verdict, meta])
    parts = []
    shape = ph.get("asymmetry", "")
    border = ph.get("border", "")
    size = ph.get("diameter", "")
    opener = "A " + (f"{size} " if size else "") + "lesion"
    if shape:
        opener += f", {shape},"
    opener += f" with {border}." if border else "."
    parts.append(opener.replace(",.", "."))
    if "colours" in ph:
        parts.append(rng.choice((f"Colours: {ph['colours']}.", f"It shows {ph['colours']}.")))
    if "structures" in ph:
        parts.append(rng.choice((f"Structures: {ph['structures']}.", f"Dermoscopy shows {ph['structures']}.")))
    if "absent" in ph:
        parts.append(rng.choice((f"No {ph['absent']}.", f"There is no {ph['absent']}.")))
    parts.append(rng.choice((verdict, f"Consistent with {name}, a {case.malignancy} lesion.")))
    parts.append(meta)
    return " ".join(parts)


@STRATEGIES.register("P2")
def write_p2(case: Case, rng: random.Random) -> str:
    """Free description given the class only: the class's typical findings, written as if seen in this lesion."""
    dx = case.dx
    name = rng.choice(CLASS_WORDS.get(dx, (DX_NAMES.get(dx, dx),)))
    typical = list(TYPICAL.get(dx, ("no characteristic structures",)))
    rng.shuffle(typical)
    seen = _listing(rng, typical[: rng.randint(2, min(4, len(typical)))])
    return rng.choice(
        (
            f"Dermoscopic image of a {name}. The lesion shows {seen}.",
            f"This {name} displays {seen} on dermoscopy.",
            f"Findings: {seen}. Impression: {name}.",
        )
    )


@STRATEGIES.register("P3")
def write_p3(case: Case, rng: random.Random, wrong_class_rate: float = 0.3, wrong_finding_rate: float = 0.1) -> str:
    """No metadata: the writer describes what it sees and guesses the class; it can name a wrong class
    (`wrong_class_rate`) and a finding the lesion does not have (`wrong_finding_rate`).
    Expected share of notes with a contradiction: 1 - (1 - wrong_class_rate) * (1 - wrong_finding_rate)."""
    f = case.findings or {}
    guess = case.dx
    if rng.random() < wrong_class_rate and guess in _CONFUSED_WITH:
        guess = rng.choice(_CONFUSED_WITH[guess])
    colours = [c for c in f.get("colours", []) if c in COLOUR_WORDS]
    structures = [s for s in f.get("structures", []) if s in STRUCTURE_WORDS]
    description = rng.choice(
        ("The image shows a skin lesion", "I see a lesion", "Pictured is a skin lesion", "A lesion is visible")
    )
    if colours:
        picked = rng.sample(colours, min(2, len(colours)))
        description += f" with {_listing(rng, [_say(rng, COLOUR_WORDS, c) for c in picked])} areas"
    if structures:
        description += f" and {_say(rng, STRUCTURE_WORDS, rng.choice(structures))}"
    description += "."
    hallucination = ""
    if f and rng.random() < wrong_finding_rate:
        absent_c = [c for c in COLOURS if c not in f.get("colours", [])]
        absent_s = [s for s in STRUCTURES if s not in f.get("structures", [])]
        if absent_s and (rng.random() < 0.5 or not absent_c):
            hallucination = f"I also see {_say(rng, STRUCTURE_WORDS, rng.choice(absent_s))}."
        elif absent_c:
            hallucination = f"There are {_say(rng, COLOUR_WORDS, rng.choice(absent_c))} areas as well."
    guess_name = rng.choice(CLASS_WORDS.get(guess, (DX_NAMES.get(guess, guess),)))
    verdict = rng.choice(
        (f"My best guess is {guess_name}.", f"This looks most like {guess_name}.", f"Probably {guess_name}.")
    )
    parts = [description, hallucination, verdict] if rng.random() < 0.6 else [verdict, description, hallucination]
    return " ".join(x for x in parts if x)


_CLINICAL_COLOUR = {
    "white": ("white", "whitish"),
    "red": ("pink", "red"),
    "light brown": ("light brown", "tan"),
    "dark brown": ("dark brown",),
    "blue-grey": ("bluish-grey", "grey-blue"),
    "black": ("black",),
}


@STRATEGIES.register("clinical")
def write_clinical(case: Case, rng: random.Random) -> str:
    """What a clinician types at the point of care: who, where, history, what it looks like; never a diagnosis."""
    sex = {"male": rng.choice(("M", "male", "man")), "female": rng.choice(("F", "female", "woman"))}.get(case.sex or "")
    age = f"{case.age:g}" if case.age is not None else ""
    if age and sex in ("M", "F"):
        who = rng.choice((f"{age}{sex}.", f"{age} yo {sex}."))
    elif age:
        who = f"{age}-year-old {sex or 'patient'}."
    else:
        who = f"{_capital(sex) if sex else 'Patient'}, age not given."
    noun = rng.choice(("lesion", "spot", "growth", "mark"))
    where = _site(rng, case)
    first = f"{_capital(noun)} {where}." if where else f"{_capital(noun)}, site not given."
    parts = [who, first]
    history = (case.extra or {}).get("history") or {}
    if history.get("duration_months"):
        months = int(history["duration_months"])
        span = f"{months} months" if months < 24 else f"{months // 12} years"
        parts.append(rng.choice((f"Present for about {span}.", f"Noticed {span} ago.", f"Duration ~{span}.")))
    if history:
        if history.get("changed"):
            parts.append(
                rng.choice(
                    (
                        "Recently changed in size and colour.",
                        "Patient reports it has grown.",
                        "Changing over the last months.",
                    )
                )
            )
        else:
            parts.append(rng.choice(("Unchanged per patient.", "No change noticed.")))
        if history.get("itch"):
            parts.append(rng.choice(("Itchy at times.", "Occasional itch.")))
        parts.append("Has bled." if history.get("bleeding") else rng.choice(("No bleeding.", "Never bled.")))
    f = case.findings or {}
    exam = []
    if f.get("diameter_mm"):
        exam.append(f"about {round(float(f['diameter_mm'])):d} mm")
    if "asymmetry" in f:
        exam.append(
            rng.choice(("irregular outline", "asymmetric"))
            if f["asymmetry"]
            else rng.choice(("regular outline", "symmetric"))
        )
    if f.get("colours"):
        exam.append(_listing(rng, [rng.choice(_CLINICAL_COLOUR[c]) for c in f["colours"]]))
    features = set(f.get("features", []))
    if "scale" in features:
        exam.append(rng.choice(("scaly surface", "rough, scaly surface")))
    if "ulceration" in features:
        exam.append(rng.choice(("ulcerated", "central erosion")))
    if exam:
        parts.append("On exam: " + ", ".join(exam) + ".")
    return " ".join(parts)


# ---- the `notes` command ----


NOTES_BATCH = 500  # cases whose notes are written (one transaction) and logged together


def generate_notes(
    store: CaseStore,
    strategy: str,
    seed: int = 0,
    backend: Any = None,
    drop_contradictions: bool = False,
    log_path: Path | None = None,
) -> dict[str, Any]:
    """(Re)write one strategy's note for every stored case; every note goes through the fidelity checker and its
    result is written to `log_path` (JSON lines). With `drop_contradictions`, contradicting notes are not kept.

    Streamed: NOTES_BATCH cases at a time, their notes committed, then their log lines appended to
    `<log_path>.partial`, which becomes `log_path` when every case is done. A run stopped by a crash or cancel is
    resumed by the next one with the same arguments: cases the partial log lists are not written again (what matters
    for an LLM backend, at seconds a note). Without `log_path` there is nothing to resume from.
    """
    from mmcore.llm import write_note_llm

    STRATEGIES.get(strategy)
    started = time.perf_counter()
    backend_name = "template" if backend is None else backend.name
    run = {"strategy": strategy, "backend": backend_name, "seed": seed, "drop_contradictions": drop_contradictions}
    cases = store.cases()
    partial = log_path.with_name(log_path.name + ".partial") if log_path is not None else None
    ids = {c.case_id for c in cases}
    done = {k: v for k, v in _resume(partial, run).items() if k in ids}  # what an interrupted run finished
    if partial is not None:
        partial.parent.mkdir(parents=True, exist_ok=True)
        if not done:
            partial.write_text(json.dumps({"run": run}) + "\n")
    todo = [c for c in cases if c.case_id not in done]
    outcomes = dict(done)
    bar = tqdm(total=len(cases), initial=len(cases) - len(todo), desc=f"notes {strategy}", unit="case", file=sys.stderr)
    for start in range(0, len(todo), NOTES_BATCH):
        kept: list[tuple[str, str, str]] = []
        dropped: list[str] = []
        lines: list[str] = []
        for case in todo[start : start + NOTES_BATCH]:
            if backend is None:
                text = write_note(strategy, case, seed)
                result = check_note(text, case)
            else:
                text, result = write_note_llm(strategy, case, backend, seed)
            lines.append(json.dumps({"case_id": case.case_id, "strategy": strategy, **result.to_dict()}))
            keep = result.ok or not drop_contradictions
            if keep:
                kept.append((case.case_id, strategy, text))
            else:
                dropped.append(case.case_id)
            outcomes[case.case_id] = (not result.ok, keep)
        with store.transaction():  # the batch's notes, then its log lines: the log never names an unwritten note
            store.set_notes(kept, backend=backend_name)
            store.delete_notes(dropped, strategy)  # a dropped note must not leave an older one behind
        if partial is not None:
            with partial.open("a") as f:
                f.write("".join(line + "\n" for line in lines))
        bar.update(len(lines))
    bar.close()
    if partial is not None and log_path is not None:
        with partial.open() as f, log_path.open("w") as out:
            next(f)  # the run line
            out.writelines(f)
        partial.unlink()
    bad = sum(1 for contradicts, _ in outcomes.values() if contradicts)
    written = sum(1 for _, keep in outcomes.values() if keep)
    return {
        "strategy": strategy,
        "backend": backend_name,
        "cases": len(cases),
        "written": written,
        "with_contradictions": bad,
        "rate": bad / len(cases) if cases else 0.0,
        "dropped": len(outcomes) - written,
        "resumed": len(done),
        "seconds": round(time.perf_counter() - started, 2),
        "log": str(log_path or ""),
    }


def _resume(partial: Path | None, run: dict[str, Any]) -> dict[str, tuple[bool, bool]]:
    """case_id -> (contradicts, kept) from an interrupted run's partial log with the same arguments; {} otherwise.
    A torn last line (the crash) is cut off the file: that case is written again."""
    if partial is None or not partial.is_file():
        return {}
    lines = partial.read_text().splitlines(keepends=True)
    try:
        if not lines or json.loads(lines[0]).get("run") != run:
            return {}
    except (ValueError, AttributeError):
        return {}
    done: dict[str, tuple[bool, bool]] = {}
    whole = 1
    for line in lines[1:]:
        try:
            entry = json.loads(line) if line.endswith("\n") else None
            contradicts = bool(entry["contradictions"])
        except (ValueError, TypeError, KeyError):
            break
        done[entry["case_id"]] = (contradicts, not (run["drop_contradictions"] and contradicts))
        whole += 1
    if whole < len(lines):
        partial.write_text("".join(lines[:whole]))
    return done


def fidelity_of_notes(
    store: CaseStore,
    strategy: str,
    drop_contradictions: bool = False,
    user: str = "",
    audit: AuditLog | None = None,
) -> dict[str, Any]:
    """Check every stored note of one strategy against its case; optionally delete the contradicting ones (an
    audited change when `audit` is given: who dropped how many notes of which strategy)."""
    notes = store.notes(strategy)
    cases = {c.case_id: c for c in store.cases()}
    bad = [
        cid
        for cid, text in tqdm(notes.items(), desc=f"fidelity {strategy}", unit="note", file=sys.stderr)
        if cid in cases and not check_note(text, cases[cid]).ok
    ]
    payload: dict[str, Any] = {
        "strategy": strategy,
        "notes": len(notes),
        "with_contradictions": len(bad),
        "rate": len(bad) / len(notes) if notes else 0.0,
    }
    if drop_contradictions:
        payload["dropped"] = store.delete_notes(bad, strategy)
        if audit is not None:
            audit.append("notes_drop", user, strategy=strategy, dropped=payload["dropped"])
    return payload
