"""What a finished training run leaves behind: the model version with its card (training data, run, what trained),
then what makes the version usable and honest: its calibration and out-of-distribution scorer (fitted on the
validation split), its findings probe (fitted on the training split's recorded findings), its test evaluation and the
quality of its explanations. `complete_version` redoes the latter for an existing version.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from mmcore.audit import AuditLog, acting_user
from mmcore.cases import CaseStore
from mmcore.checkpoints import BEST_FILE, METRICS_FILE, SUMMARY_FILE, LoopState
from mmcore.config import Config
from mmcore.devices import Dist
from mmcore.model_card import ModelCard, TowerCard, TrainingData, TrainingRun, data_summary

if TYPE_CHECKING:
    from mmcore.model_store import LoadedModel
    from mmcore.train import RunData

Progress = Callable[[float, str], None]
EVAL_STRATEGIES = ("clinical",)  # a version is evaluated first with the notes clinicians type


def _say(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def trained_parts(cfg: Config) -> dict[str, list[str]]:
    """Which parts of each tower learned in this configuration, as the card records them."""
    t = cfg.train
    if t.finetune == "heads":
        return {"image": [], "text": []}
    if t.finetune == "partial":
        text = [f"last {t.trainable_text_layers} layers"] if t.trainable_text_layers else []
        return {"image": [f"last {t.trainable_blocks} blocks"], "text": text}
    return {"image": ["all"], "text": ["all"]}


def register_run(
    cfg: Config,
    data: RunData,
    run_dir: Path,
    state: LoopState,
    ddp: Dist,
    device: torch.device,
    seconds: float,
    amp: str,
    promote: bool,
) -> tuple[str, dict[str, float]]:
    """Load the best epoch's weights, save the version with its card, complete it, audit, maybe promote."""
    from mmcore.model_store import load_weights, save_version

    best = run_dir / BEST_FILE
    if best.is_file() and state.best_epoch:
        load_weights(data.module, best.read_bytes())
    selected = state.best_epoch or state.epoch
    lines = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip()]
    chosen = next((r for r in lines if r["epoch"] == selected), lines[-1] if lines else {})
    validation = {k.removeprefix("val_"): v for k, v in chosen.items() if k.startswith("val_")}
    t = cfg.train
    parts = trained_parts(cfg)
    card = ModelCard(
        encoders={kind: TowerCard(trained=parts[kind]) for kind in ("image", "text")},
        training_data=TrainingData(
            train=data_summary(data.train_set.cases, data.train_set.skipped),
            val=data_summary(data.val_set.cases, data.val_set.skipped),
            note_strategies=list(t.note_strategies),
            train_domains=list(t.train_domains),
            source=t.source,
        ),
        training=TrainingRun(
            finetune=t.finetune,
            trainable_blocks=t.trainable_blocks if t.finetune == "partial" else 0,
            epochs=state.epoch,
            steps=state.step,
            selected_epoch=selected,
            selection="best validation balanced accuracy (fused)" if state.best_epoch else "last epoch",
            augment=t.augment and t.finetune != "heads",
            balanced_sampling=t.balanced_sampling,
            batch_size=t.batch_size,
            lr=t.lr,
            world_size=ddp.world_size,
            device=str(device),
            amp=bool(amp),
            seconds=round(seconds, 1),
            run_dir=str(run_dir),
            validation=validation,
        ),
    )
    model = data.model.to("cpu").to(memory_format=torch.contiguous_format)
    version = save_version(model, cfg, card)
    _say(f"saved model version {version}; calibrating, fitting its out-of-distribution gate, evaluating")
    complete_version(cfg, version)
    user = acting_user()
    AuditLog(cfg.audit_path).append(
        "train", user, model_version=version, run_dir=str(run_dir), epochs=state.epoch, steps=state.step
    )
    if promote:
        from mmcore.model_store import promote as promote_version

        promote_version(cfg, version, user, progress=_progress_bar(f"promote {version}"))
    summary = {"version": version, "run_dir": str(run_dir), "validation": validation, "promoted": promote}
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    _say(f"model version {version} is ready{' and active' if promote else ''}")
    return version, validation


def complete_version(cfg: Config, version: str, loaded: LoadedModel | None = None) -> ModelCard:
    """Make a saved version usable and honest: its calibration and out-of-distribution gate fitted on the training and
    validation splits, its findings probe on the training split's recorded findings (stored beside the OOD scorer,
    hashed; none when too few cases have findings), then its test evaluation (see evaluation_strategy); returns its
    card."""
    from mmcore.concepts import fit_findings
    from mmcore.evaluate import run_evaluation
    from mmcore.model_store import load_version, read_card

    loaded = loaded or load_version(cfg, version)
    fit_trust(cfg, loaded)
    loaded = load_version(cfg, version)  # with its OOD scorer and calibration
    findings = fit_findings(cfg, loaded)
    if findings is None:
        _say("no training case has enough recorded findings: findings stay zero-shot (uncalibrated) for this version")
    else:
        summary = findings.extra["findings"]
        mean = summary["val_auroc_mean"]
        _say(
            f"findings probe fitted for {len(summary['probed'])} findings"
            + (f" (mean validation AUROC {mean:.2f})" if mean is not None else "")
        )
        loaded = load_version(cfg, version)  # with the probe's files in its card
    strategy = evaluation_strategy(cfg, loaded.card)
    if strategy is None:
        _say(f"warning: no note strategy covers every test case; {version} is not evaluated (eval it by hand)")
    else:
        try:
            run_evaluation(cfg, version, "test", strategy, loaded=loaded)
        except ValueError as e:  # no test cases: the card says so by having no evaluation
            _say(f"warning: {version} could not be evaluated on its test split: {e}")
    return read_card(cfg, version)


def fit_trust(cfg: Config, loaded: LoadedModel) -> ModelCard:
    """Fit the version's OOD scorer (train split, threshold on val) and temperatures per modality (val split, with
    the evaluation notes); write ood.safetensors/ood.json into its folder, hashed, and both into its card."""
    from mmcore.calibrate import fit_calibration
    from mmcore.evaluate import MODALITIES, case_outputs, select_cases
    from mmcore.model_store import add_files, update_card
    from mmcore.ood import fit_ood

    card, model = loaded.card, loaded.model
    data = card.training_data
    strategies = data.note_strategies or list(cfg.train.note_strategies)
    device = next(model.parameters()).device
    strategy = evaluation_strategy(cfg, card)
    with CaseStore(cfg.home) as store:
        scorer = fit_ood(model, store, strategies, cfg.cache_dir, data.train_domains, data.source)
        val, _ = select_cases(store, "val", model.classes, strategy) if strategy else ([], {})
        outputs = case_outputs(model, store, val, strategy, device, cache_dir=cfg.cache_dir) if val else None
    add_files(cfg, loaded.version, scorer.save(loaded.path))
    calibration = None
    if outputs is not None:
        calibration = fit_calibration({m: outputs.logits(m) for m in MODALITIES}, outputs.labels)
        temps = ", ".join(f"{m} {t:.2f}" for m, t in calibration.temperatures.items())
        _say(f"calibrated on {calibration.n} validation cases ({strategy} notes): temperature {temps}")
    else:
        _say("warning: no validation cases with notes to calibrate on; scores stay uncalibrated")

    def change(c: ModelCard) -> None:
        c.ood = scorer.card()
        c.calibration = calibration.to_dict() | {"text_strategy": strategy} if calibration else {}

    return update_card(cfg, loaded.version, change)


def evaluation_strategy(cfg: Config, card: ModelCard) -> str | None:
    """The note strategy a version is evaluated with: clinical when the store has such notes, else the first of the
    training strategies it has (test cases without that note are counted as skipped in the evaluation)."""
    with CaseStore(cfg.home) as store:
        have = store.note_strategies()
    return next((s for s in (*EVAL_STRATEGIES, *card.training_data.note_strategies) if have.get(s)), None)


def _progress_bar(desc: str) -> Progress:
    bar = tqdm(total=100, desc=desc, unit="%", file=sys.stderr, disable=None)

    def update(fraction: float, text: str) -> None:
        bar.n = round(100 * fraction)
        bar.set_postfix_str(text, refresh=True)
        if fraction >= 1:
            bar.close()

    return update


def card_text(card: ModelCard, active: bool) -> str:
    """A few lines describing a version for the terminal."""
    head = card.headline
    lines = [
        f"{card.version}{'  (active)' if active else ''}",
        f"  {card.intended_use}",
        f"  trained on: {card.trained_on}",
    ]
    for kind, tower in card.encoders.items():
        trained = ", ".join(tower.trained) or "frozen"
        lines.append(
            f"  {kind} tower: {tower.name} ({'pretrained' if tower.pretrained else 'not pretrained'}; {trained})"
        )
    if head is not None:
        for m, s in head.modalities.items():
            lines.append(f"  {head.split}/{head.text_strategy} {m}: balanced accuracy {_num(s.balanced_accuracy)}")
    if card.calibration:
        lines.append(f"  calibration: {json.dumps(card.calibration.get('temperatures', {}))}")
    if card.ood:
        lines.append(f"  out-of-distribution gate: {json.dumps({k: v.get('threshold') for k, v in card.ood.items()})}")
    return "\n".join(lines)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"
