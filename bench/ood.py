"""Out-of-distribution (OOD) scoring and calibration of a model version (issue 11): which OOD score flags what at a
threshold chosen on validation, what temperature scaling does to the ECE, and how often the verdict on the same
lesion changes with the acquisition domain.

    MMDERM_HOME=/tmp/oodbench/home python -m mmcore demo        # once: the demo model in a scratch home
    python bench/ood.py --home /tmp/oodbench/home [--version V] [--n-shift 150]

In-distribution: the version's test split. Near-OOD: (a) a domain left out (heads trained by run_training on two
domains, scored on the third; the run is kept in the home and reused), (b) classes left out (heads trained here
without df and vasc). Far-OOD images and odd notes: bench/ood_inputs.py. Writes bench/results/ood.md and .json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ood_inputs
import torch
from sklearn.metrics import roc_auc_score

from mmcore.calibrate import apply_temperature, expected_calibration_error, fit_calibration, fit_temperature
from mmcore.cases import DX_CLASSES, CaseStore
from mmcore.config import Config, load_config
from mmcore.datasets import CaseSet, FeatureBatches, cached_features, load_case_set
from mmcore.model import MultimodalModel
from mmcore.model_store import load_version
from mmcore.ood import (
    VAL_PASS,
    ImageOOD,
    fit_image_ood,
    fit_mahalanobis,
    fit_note_ood,
    image_ood_features,
    knn_distance,
    l2_normalise,
    mahalanobis_distance,
    note_features,
    pass_threshold,
)
from mmcore.synthderm import generate_one

RESULTS = Path(__file__).resolve().parent / "results"
STRATEGIES = ("P1", "clinical")
LEFT_OUT_CLASSES = ("df", "vasc")
TRAIN_DOMAINS = ("dermoscopy", "atlas")  # arm (a): clinical is left out
SHIPPED = "Mahalanobis, L2-normalised backbone (shipped)"
Score = Callable[["Outputs"], np.ndarray]


@dataclass
class Outputs:
    """What the OOD scores read for N inputs: image-tower features, image logits, shared embeddings, labels."""

    feats: np.ndarray  # (N, F_img)
    logits: np.ndarray  # (N, C)
    embeds: np.ndarray  # (N, D)
    labels: np.ndarray  # (N,) -1 where unknown

    def take(self, mask: np.ndarray) -> Outputs:
        return Outputs(self.feats[mask], self.logits[mask], self.embeds[mask], self.labels[mask])


@torch.inference_mode()
def outputs_of(model: MultimodalModel, feats: np.ndarray, labels: np.ndarray | None = None) -> Outputs:
    out = model.forward_features(image_features=torch.as_tensor(feats))
    labels = np.full(len(feats), -1) if labels is None else labels
    return Outputs(feats, out.image_logits.numpy(), out.image_embeds.numpy(), labels)


def energy_score(logits: np.ndarray) -> np.ndarray:
    """(B,) free energy -logsumexp(logits) (Liu et al. 2020): higher on OOD inputs."""
    m = logits.max(1)
    return -(m + np.log(np.exp(logits - m[:, None]).sum(1)))


def image_candidates(train: Outputs, val: Outputs) -> dict[str, Score]:
    """Every candidate image score fitted on `train` (combinations standardised on `val`): name -> score(Outputs)."""
    c: dict[str, Score] = {}
    for k in (1, 5, 10, 20, 50):
        gate = fit_image_ood(train.feats, train.labels, val.feats, "knn", k)
        c[f"kNN k={k}, L2-normalised backbone"] = lambda o, g=gate: g.score(o.feats)
    shipped = fit_image_ood(train.feats, train.labels, val.feats, "mahalanobis")
    c[SHIPPED] = lambda o: shipped.score(o.feats)
    centres, whiten = fit_mahalanobis(train.feats, train.labels)
    c["Mahalanobis, raw backbone"] = lambda o: mahalanobis_distance(centres, whiten, o.feats)
    c["energy, image logits"] = lambda o: energy_score(o.logits)
    c["max logit, image logits"] = lambda o: -o.logits.max(1)
    bank = l2_normalise(train.embeds)
    c["kNN k=10, 128-d shared space"] = lambda o: knn_distance(bank, o.embeds, 10)

    def max_z(a: str, b: str) -> Score:
        sa, sb = c[a](val), c[b](val)
        return lambda o: np.maximum((c[a](o) - sa.mean()) / sa.std(), (c[b](o) - sb.mean()) / sb.std())

    c["max z: kNN k=10 + Mahalanobis (L2)"] = max_z("kNN k=10, L2-normalised backbone", SHIPPED)
    c["max z: Mahalanobis (L2) + energy"] = max_z(SHIPPED, "energy, image logits")
    return c


def ood_metrics(val: np.ndarray, test_in: np.ndarray, ood: np.ndarray) -> dict[str, float]:
    """AUROC (OOD positive), FPR95 (OOD passing where 95% of test in-dist pass), and rates at the val threshold."""
    thr_val, _ = pass_threshold(val, VAL_PASS)
    thr_test, _ = pass_threshold(test_in, VAL_PASS)
    return {
        "auroc": float(roc_auc_score(np.r_[np.zeros(len(test_in)), np.ones(len(ood))], np.r_[test_in, ood])),
        "fpr95": float(np.mean(ood <= thr_test)),
        "ood_pass_at_val_threshold": float(np.mean(ood <= thr_val)),
        "in_dist_flagged_at_val_threshold": float(np.mean(test_in > thr_val)),
        "n_ood": len(ood),
    }


def score_table(train: Outputs, val: Outputs, test_in: Outputs, ood_sets: dict[str, Outputs]) -> dict:
    """candidate -> {n_test_in, OOD set -> ood_metrics} for one arm."""
    table = {}
    for name, score in image_candidates(train, val).items():
        sv, st = score(val), score(test_in)
        table[name] = {"n_test_in": len(st), **{k: ood_metrics(sv, st, score(o)) for k, o in ood_sets.items()}}
    return table


def images_features(model: MultimodalModel, images: list) -> np.ndarray:
    """(N, F_img) image-tower features of PIL images (eval transform), in batches of 32."""
    transform = model.image_transform(train=False)
    chunks = [torch.stack([transform(im) for im in images[i : i + 32]]) for i in range(0, len(images), 32)]
    return np.concatenate([image_ood_features(model, c) for c in chunks])


def subset(cs: CaseSet, keep: np.ndarray) -> CaseSet:
    idx = np.flatnonzero(keep)
    notes = {s: [cs.notes[s][i] for i in idx] for s in cs.strategies}
    return CaseSet([cs.cases[i] for i in idx], cs.labels[idx], cs.classes, cs.strategies, notes)


def train_heads(cfg: Config, base: MultimodalModel, sets: dict[str, CaseSet], feats: dict) -> MultimodalModel:
    """Fresh heads on the frozen towers of `base`, trained with train_loop on cached features (best val epoch)."""
    from mmcore.train import EpochResult, LoopState, train_loop

    model = copy.deepcopy(base)
    torch.manual_seed(cfg.train.seed)
    for m in model.heads.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    model.freeze_backbones()
    t = cfg.train
    kw = {"balanced": t.balanced_sampling, "seed": t.seed, "device": torch.device("cpu")}
    batches = {
        s: FeatureBatches(sets[s], torch.as_tensor(feats[s][0]), torch.as_tensor(feats[s][1]), t.batch_size, **kw)
        for s in ("train", "val")
    }
    opt = torch.optim.Adam(model.heads.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    best = None
    for r in train_loop(model.heads, opt, scaler, batches["train"], batches["val"], model.heads, cfg, LoopState()):
        if isinstance(r, EpochResult) and r.improved:
            best = copy.deepcopy(model.heads.state_dict())
    model.heads.load_state_dict(best)
    return model.eval()


def domains_model(cfg: Config) -> MultimodalModel:
    """Heads trained by run_training on TRAIN_DOMAINS only; a finished run in the home is reused."""
    from mmcore.train import run_training

    run_dir = cfg.home / "runs" / "oodbench-domains"
    summary = run_dir / "summary.json"
    if summary.is_file():
        version = json.loads(summary.read_text())["version"]
    else:
        version = run_training(cfg.replace(**{"train.train_domains": json.dumps(list(TRAIN_DOMAINS))}), run_dir).version
    return load_version(cfg, version, device="cpu").model


def domain_shift(model: MultimodalModel, n: int) -> dict:
    """The same lesions rendered in dermoscopy and clinical framing: verdict changes and the gate's pass rates."""
    pairs = [(generate_one(i, 7, ("dermoscopy",)), generate_one(i, 7, ("clinical",))) for i in range(n)]
    derm, clin = (images_features(model, [p[j].image for p in pairs]) for j in (0, 1))
    a, b = [p[0].case for p in pairs], [p[1].case for p in pairs]
    truth = np.array([DX_CLASSES.index(c.dx) for c in a])
    pairs_ab = list(zip(a, b, strict=True))
    same = [(x.dx, x.lesion_id, x.extra["variant"]) == (y.dx, y.lesion_id, y.extra["variant"]) for x, y in pairs_ab]
    return {
        "n": n,
        "same_dx_lesion_variant": float(np.mean(same)),
        "same_fitzpatrick": float(np.mean([x.fitzpatrick == y.fitzpatrick for x, y in pairs_ab])),
        "same_findings": float(np.mean([x.findings == y.findings for x, y in pairs_ab])),
        "features": (derm, clin, truth),
    }


def shift_row(model: MultimodalModel, gate: ImageOOD, shift: dict) -> dict[str, float]:
    derm, clin, truth = shift["features"]
    pd_, pc = outputs_of(model, derm).logits.argmax(1), outputs_of(model, clin).logits.argmax(1)
    return {
        "verdict_changed": float(np.mean(pd_ != pc)),
        "accuracy_dermoscopy": float(np.mean(pd_ == truth)),
        "accuracy_clinical": float(np.mean(pc == truth)),
        "gate_pass_dermoscopy": float(np.mean(gate.score(derm) <= gate.threshold)),
        "gate_pass_clinical": float(np.mean(gate.score(clin) <= gate.threshold)),
    }


def notes_arm(model: MultimodalModel, sets: dict[str, CaseSet], feats: dict) -> dict:
    """The note gate and its parts on test notes against gibberish, other languages, templates, empty notes."""

    def by_strategy(split: str) -> tuple[list[str], np.ndarray]:
        texts = [n for s in STRATEGIES for n in sets[split].notes[s]]
        return texts, np.concatenate([feats[split][1][i] for i in range(len(STRATEGIES))])

    train_texts, train_f = by_strategy("train")
    val_texts, val_f = by_strategy("val")
    scorer = fit_note_ood(train_texts, train_f, val_f, k=10)
    odd = {"gibberish": ood_inputs.gibberish_notes(), "other language": ood_inputs.foreign_notes(),
           "blank template": ood_inputs.template_notes(), "no clinical content": ood_inputs.contentless_notes(),
           "realistic English": list(ood_inputs.REALISTIC_NOTES)}  # fmt: skip

    def scores(texts: list[str], f: np.ndarray) -> dict:
        v = scorer.verdicts(texts, f)
        checks = np.array([scorer.word_checks(t) for t in texts], dtype=float)  # (n, 3): words, known, content
        return {
            "kNN k=10, text tower": np.array([x.score for x in v]),
            "unknown-word share": 1 - checks[:, 1] / np.maximum(checks[:, 0], 1),
            "minus clinical words": -checks[:, 2],
            "flagged": np.array([not x.in_distribution for x in v]),
            "cautioned": np.array([bool(x.cautions) for x in v]),
            "verdicts": v,
        }

    val = scores(val_texts, val_f)
    test = {s: scores(sets["test"].notes[s], feats["test"][1][i]) for i, s in enumerate(STRATEGIES)}
    bad = {k: scores(v, note_features(model, v)) for k, v in odd.items()}
    parts = ("kNN k=10, text tower", "unknown-word share", "minus clinical words")
    table = {
        p: {k: ood_metrics(val[p], np.r_[test["P1"][p], test["clinical"][p]], v[p]) for k, v in bad.items()}
        for p in parts
    }
    rows = {**{f"test {s} notes (in-dist)": test[s] for s in STRATEGIES}, **bad}
    real = bad["realistic English"]
    return {
        "knn_threshold": scorer.threshold, "knn_val_pass_rate": scorer.val_pass_rate,
        "min_known_share": scorer.min_known_share, "min_content_words": scorer.min_content_words,
        "vocabulary_size": len(scorer.vocabulary),
        "table": table,
        "flagged": {k: float(v["flagged"].mean()) for k, v in rows.items()},
        "cautioned": {k: float(v["cautioned"].mean()) for k, v in rows.items()},
        "knn_range": {k: [float(v[parts[0]].min()), float(v[parts[0]].max())] for k, v in {"val": val, **rows}.items()},
        "realistic": [
            {"note": t, "flagged": not v.in_distribution, "reasons": list(v.reasons), "cautions": list(v.cautions),
             "known_share": round(1 - float(u), 3), "knn": round(v.score, 4)}
            for t, v, u in zip(odd["realistic English"], real["verdicts"], real["unknown-word share"], strict=True)
        ],
        "examples": {
            k: [{"note": t, "reasons": list(x.reasons)} for t, x in zip(odd[k][:2], v["verdicts"][:2], strict=True)]
            for k, v in bad.items()
        },
    }  # fmt: skip


def calibration_arm(model: MultimodalModel, sets: dict[str, CaseSet], feats: dict) -> dict:
    """Temperatures fitted on val (clinical notes), ECE on test before and after; the ECE of perfectly calibrated
    scores on as many cases (noise floor); and, as a diagnosis only, a class-prior correction (changes verdicts)."""
    c = STRATEGIES.index("clinical")

    @torch.inference_mode()
    def logits(split: str) -> dict[str, np.ndarray]:
        o = model.forward_features(torch.as_tensor(feats[split][0]), torch.as_tensor(feats[split][1][c]))
        return {"image": o.image_logits.numpy(), "text": o.text_logits.numpy(), "fused": o.fused_logits.numpy()}

    cal = fit_calibration(logits("val"), sets["val"].labels)
    test, y = logits("test"), sets["test"].labels
    rng = np.random.default_rng(0)
    floor, prior = {}, {}
    log_prior = np.log(np.bincount(sets["train"].labels, minlength=len(model.classes)) + 1.0)  # (C,) train frequency
    val = logits("val")
    for m, z in test.items():
        p = cal.probabilities(m, z)
        draws = [expected_calibration_error(p, np.array([rng.choice(len(r), p=r) for r in p])) for _ in range(100)]
        floor[m] = float(np.mean(draws))
        # Balanced sampling trained the heads for equal classes; the splits follow HAM10000's (71% nv). Adding the
        # log training prior is the Bayes correction for that shift; it moves the argmax, so calibrate.py does not.
        t = fit_temperature(val[m] + log_prior, sets["val"].labels)
        prior[m] = {
            "temperature": t,
            "test_ece": expected_calibration_error(apply_temperature(z + log_prior, t), y),
            "verdicts_changed": float(np.mean((z + log_prior).argmax(1) != z.argmax(1))),
            "accuracy_before": float(np.mean(z.argmax(1) == y)),
            "accuracy_after": float(np.mean((z + log_prior).argmax(1) == y)),
        }
    return {
        **cal.to_dict(),
        "test_n": len(y),
        "test_ece_before": {m: expected_calibration_error(apply_temperature(z, 1.0), y) for m, z in test.items()},
        "test_ece_after": {m: expected_calibration_error(cal.probabilities(m, z), y) for m, z in test.items()},
        "test_ece_floor": floor,
        "prior_correction_diagnosis": prior,
        "calibration": cal,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, help="data home holding the version (MMDERM_HOME)")
    parser.add_argument("--version", default=None, help="model version (default: the active one)")
    parser.add_argument("--n-shift", type=int, default=150, help="lesions rendered in two domains")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    os.environ["MMDERM_HOME"] = str(Path(args.home).resolve())
    cfg = load_config("demo")
    loaded = load_version(cfg, args.version, device="cpu")
    model = loaded.model
    print(f"{loaded.version} in {cfg.home}", file=sys.stderr)
    report: dict = {"version": loaded.version, "home": str(cfg.home), "classes": list(model.classes)}

    with CaseStore(cfg.home) as store:
        sets = {s: load_case_set(store, s, model.classes, STRATEGIES) for s in ("train", "val", "test")}
        feats = {
            s: tuple(t.numpy() for t in cached_features(model, store, cs, cfg.cache_dir, torch.device("cpu")))
            for s, cs in sets.items()
        }  # split -> (image features (N, F), text features (S, N, F))
    out = {s: outputs_of(model, feats[s][0], sets[s].labels) for s in sets}
    domain = {s: np.array([c.domain for c in sets[s].cases]) for s in sets}
    dx = {s: np.array([c.dx for c in sets[s].cases]) for s in sets}
    report["n"] = {s: len(sets[s]) for s in sets}

    far = ood_inputs.far_ood_images()
    far_feats = images_features(model, [im for _, im in far])
    kinds = sorted({name.split(":")[0] for name, _ in far})
    report["far_kinds"] = {k: sum(n.startswith(k + ":") for n, _ in far) for k in kinds}

    # demo model: in-dist = its test split
    report["image"] = {
        "demo": score_table(out["train"], out["val"], out["test"], {"far": outputs_of(model, far_feats)})
    }

    # (a) a domain left out
    model_a = domains_model(cfg)
    seen = {s: np.isin(domain[s], TRAIN_DOMAINS) for s in sets}
    out_a = {s: outputs_of(model_a, feats[s][0], sets[s].labels).take(seen[s]) for s in sets}
    clinical = np.concatenate([feats[s][0][~seen[s]] for s in sets])  # every clinical-domain case
    ood_a = {"clinical domain": outputs_of(model_a, clinical), "far": outputs_of(model_a, far_feats)}
    report["image"]["domain left out"] = score_table(out_a["train"], out_a["val"], out_a["test"], ood_a)

    # (b) classes left out
    keep = {s: ~np.isin(dx[s], LEFT_OUT_CLASSES) for s in sets}
    model_b = train_heads(
        cfg, model, {s: subset(sets[s], keep[s]) for s in ("train", "val")},
        {s: (feats[s][0][keep[s]], feats[s][1][:, keep[s]]) for s in ("train", "val")},
    )  # fmt: skip
    out_b = {s: outputs_of(model_b, feats[s][0], sets[s].labels).take(keep[s]) for s in sets}
    unseen = np.concatenate([feats[s][0][~keep[s]] for s in sets])  # every df and vasc case
    ood_b = {"df + vasc": outputs_of(model_b, unseen), "far": outputs_of(model_b, far_feats)}
    report["image"]["classes left out"] = score_table(out_b["train"], out_b["val"], out_b["test"], ood_b)

    # the shipped scorer on the demo model: per-input verdicts, cost
    gate = fit_image_ood(out["train"].feats, out["train"].labels, out["val"].feats)
    gate_a = fit_image_ood(out_a["train"].feats, out_a["train"].labels, out_a["val"].feats)
    cal = calibration_arm(model, sets, feats)
    far_scores = gate.score(far_feats)
    far_logits = outputs_of(model, far_feats).logits
    p_before, p_after = apply_temperature(far_logits, 1.0), cal["calibration"].probabilities("image", far_logits)
    report["shipped"] = {
        "method": gate.method, "threshold": gate.threshold, "val_pass_rate": gate.val_pass_rate,
        "test_flagged": float(np.mean(gate.score(out["test"].feats) > gate.threshold)),
        "far_flagged": float(np.mean(far_scores > gate.threshold)),
        "far_by_kind": {
            k: float(np.mean(far_scores[[n.startswith(k + ":") for n, _ in far]] > gate.threshold)) for k in kinds
        },
        "far_inputs": [
            {"name": n, "score": round(float(s), 4), "flagged": bool(s > gate.threshold),
             "top_class": model.classes[int(a.argmax())], "top_probability": round(float(a.max()), 4),
             "top_probability_calibrated": round(float(b.max()), 4)}
            for (n, _), s, a, b in zip(far, far_scores, p_before, p_after, strict=True)
        ],
    }  # fmt: skip
    # Absolute times on these shared cores are noisy: the least disturbed of several repeats (as timeit advises).
    one, image = out["test"].feats[:1], model.image_transform()(far[0][1]).unsqueeze(0)
    score_ms = min(timeit.repeat(lambda: gate.score(one), number=100, repeat=5)) / 100 * 1000
    forward_ms = min(timeit.repeat(lambda: image_ood_features(model, image), number=5, repeat=4)) / 5 * 1000
    report["shipped"]["cost"] = {"score_ms": score_ms, "image_tower_ms": forward_ms, "ratio": score_ms / forward_ms}

    shift = domain_shift(model, args.n_shift)
    report["domain_shift"] = {
        **{k: v for k, v in shift.items() if k != "features"},
        "demo (trained on all three domains)": shift_row(model, gate, shift),
        f"trained on {' + '.join(TRAIN_DOMAINS)}": shift_row(model_a, gate_a, shift),
    }
    report["notes"] = notes_arm(model, sets, feats)
    report["calibration"] = {k: v for k, v in cal.items() if k != "calibration"}
    report["seconds"] = round(time.perf_counter() - started, 1)
    write(report, args.out)


# ---- the report ---------------------------------------------------------------------------------------------------


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def write(report: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ood.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    n, s = report["n"], report["shipped"]
    lines = [
        "# Out-of-distribution scoring and calibration",
        "",
        f"Command: `python bench/ood.py --home {report['home']}` ({report['seconds']:.0f} s on 2 shared CPU cores), "
        f"after `MMDERM_HOME={report['home']} python -m mmcore demo`; version {report['version']}.",
        "",
        f"Cases (SynthDerm, three domains): train {n['train']}, val {n['val']}, test {n['test']}. Every threshold is "
        f"chosen on the validation split so that {VAL_PASS:.0%} of it passes (score <= threshold). Far-OOD: "
        + ", ".join(f"{k} {v}" for k, v in report["far_kinds"].items())
        + " (bench/ood_inputs.py: each image as made and randomly cropped, flat colours only as made).",
        "",
        "AUROC: OOD inputs (positive) against the test split. FPR95: share of OOD inputs that still pass at the "
        "threshold where 95% of the test split passes. 'passes @val': the same at the threshold chosen on validation, "
        "which is what ships; 'test flagged': test-split cases flagged at that threshold (target <= 5%).",
        "",
    ]
    titles = {
        "demo": "Images: the demo model (in-distribution: its test split)",
        "domain left out": f"Near-OOD (a): heads trained on {' + '.join(TRAIN_DOMAINS)}; the clinical domain is OOD",
        "classes left out": f"Near-OOD (b): heads trained without {' and '.join(LEFT_OUT_CLASSES)}; they are OOD",
    }
    for key, title in titles.items():
        table = report["image"][key]
        first = next(iter(table.values()))
        sets = [k for k in first if k != "n_test_in"]
        head = ["test flagged"] + [f"{x}: {h}" for x in sets for h in ("AUROC", "FPR95", "passes @val")]
        lines += [f"## {title}", "", _row("score", *head), _row(*["---"] * (len(head) + 1))]
        for name, r in table.items():
            cells = [_pct(r[sets[0]]["in_dist_flagged_at_val_threshold"])]
            for x in sets:
                cells += [f"{r[x]['auroc']:.3f}", _pct(r[x]["fpr95"]), _pct(r[x]["ood_pass_at_val_threshold"])]
            lines.append(_row(f"**{name}**" if name == SHIPPED else name, *cells))
        lines += ["", f"n: test {first['n_test_in']}, " + ", ".join(f"{x} {first[x]['n_ood']}" for x in sets), ""]
    cat = next(x for x in s["far_inputs"] if x["name"] == "skimage:chelsea")
    passing = [x["name"] for x in s["far_inputs"] if not x["flagged"]]
    lines += [
        "## The shipped image gate on the demo model",
        "",
        f"`fit_image_ood(train_feats, train_labels, val_feats)`, method {s['method']}: threshold {s['threshold']:.3f}, "
        f"validation pass {_pct(s['val_pass_rate'])}, test split flagged {_pct(s['test_flagged'])}, far-OOD flagged "
        f"{_pct(s['far_flagged'])}. By kind: " + ", ".join(f"{k} {_pct(v)}" for k, v in s["far_by_kind"].items()) + ".",
        "Far-OOD inputs that pass: " + (", ".join(f"`{p}`" for p in passing) or "none") + ".",
        f"The cat (`skimage:chelsea`): the image head says {cat['top_class']} {_pct(cat['top_probability'])} "
        f"({_pct(cat['top_probability_calibrated'])} after temperature scaling); flagged: {cat['flagged']}.",
        f"Cost: {s['cost']['score_ms']:.3f} ms per input, {s['cost']['ratio']:.4f}x one image-tower forward pass "
        f"(batch of one, {s['cost']['image_tower_ms']:.0f} ms) in the same run (best of 4-5 repeats each).",
        "",
    ]
    d = report["domain_shift"]
    lines += [
        "## The same lesion photographed in another acquisition domain",
        "",
        f"{d['n']} lesions made by `generate_one(i, seed=7, domains=(\"dermoscopy\",))` and `(\"clinical\",)`: the "
        f"same class, lesion id and variant in {_pct(d['same_dx_lesion_variant'])} of pairs. The lesion plan is the "
        f"same; skin type and framing are drawn per domain (same Fitzpatrick type in {_pct(d['same_fitzpatrick'])}, "
        f"identical drawn findings in {_pct(d['same_findings'])}).",
        "",
        _row("model", "image top class changed", "accuracy dermoscopy", "accuracy clinical", "gate passes dermoscopy",
             "gate passes clinical"),
        _row(*["---"] * 6),
    ]  # fmt: skip
    for name, r in d.items():
        if isinstance(r, dict):
            keys = ("verdict_changed", "accuracy_dermoscopy", "accuracy_clinical", "gate_pass_dermoscopy")
            lines.append(_row(name, *(_pct(r[k]) for k in (*keys, "gate_pass_clinical"))))
    nt = report["notes"]
    kinds = list(next(iter(nt["table"].values())))
    lines += [
        "",
        "## Notes",
        "",
        f"Fitted on the train split's {'/'.join(STRATEGIES)} notes (vocabulary {nt['vocabulary_size']} words). A note "
        f"is flagged when under {nt['min_known_share']:.0%} of its words are known (training vocabulary or English "
        f"function words) or it has fewer than {nt['min_content_words']} clinical words; a kNN distance over "
        f"{nt['knn_threshold']:.3f} (validation pass {_pct(nt['knn_val_pass_rate'])}) only adds a caution.",
        "",
        _row("score", *(f"{k}: {h}" for k in kinds for h in ("AUROC", "FPR95"))),
        _row(*["---"] * (2 * len(kinds) + 1)),
    ]
    for name, r in nt["table"].items():
        lines.append(_row(name, *(c for k in kinds for c in (f"{r[k]['auroc']:.3f}", _pct(r[k]["fpr95"])))))
    lines += ["", _row("notes", "flagged", "cautioned (kNN)", "kNN distance min-max"), _row(*["---"] * 4)]
    for k, v in nt["flagged"].items():
        lo, hi = nt["knn_range"][k]
        lines.append(_row(k, _pct(v), _pct(nt["cautioned"][k]), f"{lo:.2f}-{hi:.2f}"))
    lo, hi = nt["knn_range"]["val"]
    lines += ["", f"Validation notes' kNN distance: {lo:.2f}-{hi:.2f}.", "", "Realistic clinician-written notes:", ""]
    lines += [_row("note", "known words", "flagged", "reason or caution"), _row(*["---"] * 4)]
    for x in nt["realistic"]:
        lines.append(
            _row(
                x["note"],
                _pct(x["known_share"]),
                "yes" if x["flagged"] else "no",
                " ".join(x["reasons"] + x["cautions"]),
            )
        )
    c = report["calibration"]
    lines += [
        "",
        "## Calibration: temperature scaling fitted on the validation split (clinical notes), ECE with 15 bins",
        "",
        _row("modality", "temperature", "val ECE before", "val ECE after", "test ECE before", "test ECE after",
             "test ECE of perfectly calibrated scores"),
        _row(*["---"] * 7),
    ]  # fmt: skip
    for m, t in c["temperatures"].items():
        lines.append(_row(m, f"{t:.3f}", *(f"{c[k][m]:.3f}" for k in ("ece_before", "ece_after", "test_ece_before",
                                                                     "test_ece_after", "test_ece_floor"))))  # fmt: skip
    lines += [
        "",
        f"val n {c['n']}, test n {c['test_n']}. The last column is the mean ECE of labels drawn from the calibrated "
        "scores themselves (100 draws): what a perfectly calibrated model would show on this many cases.",
        "",
        "Diagnosis, not shipped (it changes verdicts): adding the log class frequency of the training split before "
        "temperature scaling (the heads learned with class-balanced sampling, the splits hold 71% nv):",
        "",
        _row("modality", "temperature", "test ECE", "verdicts changed", "accuracy before", "accuracy after"),
        _row(*["---"] * 6),
    ]
    for m, r in c["prior_correction_diagnosis"].items():
        lines.append(_row(m, f"{r['temperature']:.3f}", f"{r['test_ece']:.3f}", _pct(r["verdicts_changed"]),
                          _pct(r["accuracy_before"]), _pct(r["accuracy_after"])))  # fmt: skip
    (folder / "ood.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
