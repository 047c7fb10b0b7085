"""How often the note gate flags notes a clinician might type: hand-written notes, not SynthDerm's templates.

    python bench/note_gate.py --home var

Scores each note below with the active model's note gate (Predictor.check with no photo) and counts the notes it
refuses (no words, another language, no clinical content) and those it passes with the caution "worded unlike the
notes this model learned from" (kNN distance above the validation threshold), beside the same counts for the
library's own clinical notes (test split).
The notes were written for this benchmark in the style of a dermatology referral; none names a diagnosis.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NOTES = [
    "58-year-old man, lesion on the upper back noticed a year ago, has grown and darkened, no bleeding.",
    "42F, mole on left calf, changed colour over 6 months, occasionally itchy.",
    "Pigmented lesion R shoulder, irregular border, pt unsure how long present. FHx melanoma (mother).",
    "70 yo man, pearly papule on the nose with a small central crust, slowly enlarging for 2 years.",
    "Scaly rough patch on the scalp of a 75-year-old farmer, sore to touch, present for months.",
    "Firm brown nodule on the lower leg of a 35-year-old woman, dimples when pinched, stable for years.",
    "Red raised spot on the trunk, bleeds easily when knocked, appeared a few weeks ago.",
    "Stuck-on looking warty brown plaque on the back of an 80 year old, multiple similar lesions.",
    "New dark spot under the nail of the right big toe, 55-year-old woman, no trauma remembered.",
    "Patient concerned about a mole on the abdomen that has become asymmetric with several shades of brown.",
    "Teenager, many moles, one on the back larger than the others, no change reported.",
    "Ulcerated lesion on the lower lip of a 68 year old smoker, not healing for 3 months.",
    "Small blue-black papule on the arm of a 60-year-old man, noticed recently by his wife.",
    "Flat tan macule on the cheek, 72F, slowly spreading over several years, uneven pigment.",
    "Routine skin check. Lesion on the back, 6 mm, two colours, border fairly regular. Skin type II.",
    "Itchy pink scaly plaque on the forearm, sun-damaged skin, 66 years old, treated with cream without effect.",
    "Soft skin-coloured lump on the neck, long standing, no symptoms.",
    "Lesion L thigh, 8mm, black with a blue-white area centrally, enlarging. 49M.",
    "Bright red dome-shaped papule on the chest of a 30-year-old, present since pregnancy.",
    "Referral from GP: changing naevus on back, please assess. No other history given.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=REPO / "var")
    parser.add_argument("--library", type=int, default=196, help="how many of the library's test notes to score")
    args = parser.parse_args()
    os.environ["MMDERM_HOME"] = str(args.home.resolve())
    from mmcore.cases import CaseStore
    from mmcore.config import load_config
    from mmcore.predictor import Predictor

    predictor = Predictor.from_config(load_config(os.environ.get("MMDERM_CONFIG", "demo")))
    verdicts = []
    for note in NOTES:
        verdict = predictor.check(None, note).verdicts["note"]
        verdicts.append(verdict)
        said = "refused " if not verdict.in_distribution else "caution " if verdict.cautions else "passes  "
        print(f"{said} {verdict.score:.2f}  {note}")
    with CaseStore(predictor.cfg.home) as store:
        notes = [c.notes.get("clinical") for c in store.cases(with_notes=True, split="test")][: args.library]
    library = [predictor.check(None, n).verdicts["note"] for n in notes if n]

    def counts(vs: list) -> dict[str, str]:
        return {
            "refused": f"{sum(not v.in_distribution for v in vs)} of {len(vs)}",
            "passed with the caution": f"{sum(v.in_distribution and bool(v.cautions) for v in vs)} of {len(vs)}",
        }

    result = {
        "command": "python bench/note_gate.py " + " ".join(sys.argv[1:]),
        "model": predictor.version,
        "threshold": round(verdicts[0].threshold, 3),
        "hand_written": counts(verdicts),
        "library_test_clinical": counts(library),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
