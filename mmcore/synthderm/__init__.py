"""SynthDerm, the procedural dermoscopy dataset: seven HAM10000 classes on Fitzpatrick 1-6 skin in three acquisition
domains, each image with its lesion mask and the findings drawn. Same (seed, index) gives byte-identical output."""

from __future__ import annotations

from mmcore.cases import DOMAINS
from mmcore.synthderm.dataset import (
    SOURCE,
    SynthCase,
    SynthResult,
    case_id_for,
    generate,
    generate_into,
    generate_one,
)
from mmcore.synthderm.priors import HAM_PREVALENCE

__all__ = [
    "DOMAINS",
    "HAM_PREVALENCE",
    "SOURCE",
    "SynthCase",
    "SynthResult",
    "case_id_for",
    "generate",
    "generate_into",
    "generate_one",
]
