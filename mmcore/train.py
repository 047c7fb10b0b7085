"""Training: `train_loop`, one straight loop that steps and yields numbers, and around it the run (`run_training`):
data for the three fine-tuning modes (heads on cached features, partial on cached trunk activations, full on images),
DDP, AMP, checkpoints and resume (mmcore.checkpoints), a clean stop on SIGTERM, metrics lines, and the model version a
finished run registers (mmcore.register).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from mmcore.cases import DX_CLASSES, CaseStore
from mmcore.checkpoints import (
    BEST_FILE,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    STEPS_FILE,
    SUMMARY_FILE,
    CheckpointError,
    LoopState,
    load_checkpoint,
    remove_stale_temp_files,
    restore,
    save_best,
    save_checkpoint,
)
from mmcore.config import Config, config_from_toml, save_config
from mmcore.datasets import CaseSet, FeatureBatches, ImageTextBatches, PartialBatches, cached_features, load_case_set
from mmcore.devices import Dist, init_distributed
from mmcore.evaluate import accuracy, balanced_accuracy
from mmcore.heads import MultimodalOutput
from mmcore.losses import total_loss
from mmcore.model import MultimodalModel, PartialModel, PartialOutput, build_model
from mmcore.partial import fill_trained_features, outlier_exposure_loss, partial_batches, partial_split

CACHE_FILE = "activation_cache.json"  # partial runs: what computing and storing the trunk activations cost

# Exit status of a run stopped by SIGTERM after it saved a checkpoint: 128 + 15, what a shell reports for a
# process killed by SIGTERM, so scripts can tell "stopped, resumable" (143) from "finished" (0) and "failed" (1).
EXIT_STOPPED = 143


class TrainError(ValueError):
    """The run cannot start (no data, bad configuration, nothing to resume); the message says why."""


# ---- the loop -------------------------------------------------------------------------------------------------


@dataclass
class StepResult:
    epoch: int  # 0-based epoch of this step
    batch: int  # batches of the epoch done, this one included
    step: int
    losses: dict[str, float]  # total and every loss term, on the global batch


@dataclass
class EpochResult:
    epoch: int  # epochs completed (1-based)
    step: int
    train: dict[str, float]  # mean of every loss term over the epoch
    val: dict[str, float]  # loss, accuracy_* and balanced_accuracy_* on the validation split ({} without one)
    improved: bool  # the best validation score so far (model selection)
    seconds: float


def gather_outputs(out: MultimodalOutput, labels: torch.Tensor, ddp: Dist) -> tuple[MultimodalOutput, torch.Tensor]:
    """Every rank's outputs concatenated, so each loss term (NT-Xent above all) sees the global batch.

    As open_clip's gather_features: other ranks' slices arrive as constants and this rank's slice keeps its
    gradient, so the gradient of this rank's own samples is exact; the caller scales by the world size because
    DDP averages gradients over ranks.
    """

    def cat(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        parts = [torch.empty_like(t) for _ in range(ddp.world_size)]
        dist.all_gather(parts, t.detach().contiguous())
        parts[ddp.rank] = t
        return torch.cat(parts)  # (B_global, ...)

    fields = {f.name: cat(getattr(out, f.name)) for f in dataclasses.fields(out) if f.name != "learned_fusion"}
    return type(out)(**fields, learned_fusion=out.learned_fusion), cat(labels)


def objective(out: MultimodalOutput, labels: torch.Tensor, cfg: Config) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss to minimise and its terms: total_loss, plus outlier exposure on the image logits of the batch's
    outlier images (photos with the lesion removed) when it carried some, so that skin alone predicts nothing."""
    loss = total_loss(out, labels, cfg.loss)
    total, terms = loss.total, loss.to_dict()
    outliers = out.outlier_logits if isinstance(out, PartialOutput) else None
    if outliers is not None:
        oe = outlier_exposure_loss(outliers)
        total = total + cfg.loss.outlier_exposure * oe
        terms.update(outlier=float(oe.detach()), total=float(total.detach()))
    return total, terms


@torch.no_grad()
def validate(net: nn.Module, batches: Any, cfg: Config, autocast: Callable[[], Any]) -> dict[str, float]:
    """Loss and per-modality accuracy and balanced accuracy of `net` on every validation case."""
    net.eval()
    preds: dict[str, list[torch.Tensor]] = {"image": [], "text": [], "fused": []}
    labels, loss_sum, n = [], 0.0, 0
    for inputs, y in batches.ordered(cfg.train.batch_size):
        with autocast():
            out = net(**inputs)
            loss = total_loss(out, y, cfg.loss).total
        loss_sum += float(loss) * len(y)
        n += len(y)
        labels.append(y.cpu())
        for m in preds:
            preds[m].append(getattr(out, f"{m}_logits").argmax(-1).cpu())
    y = torch.cat(labels).numpy()
    result = {"loss": loss_sum / max(n, 1)}
    for m, p in preds.items():
        p = torch.cat(p).numpy()
        result[f"accuracy_{m}"] = accuracy(y, p)
        result[f"balanced_accuracy_{m}"] = balanced_accuracy(y, p)
    return result


def train_loop(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    train_batches: Any,
    val_batches: Any | None,
    val_net: nn.Module,
    cfg: Config,
    state: LoopState,
    ddp: Dist | None = None,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> Iterator[StepResult | EpochResult]:
    """Train from `state` to cfg.train.epochs (or max_steps), yielding after every step and every epoch.

    net: the trained module, maybe DDP-wrapped: the whole model, its heads on cached features, or its towers' tops
    and heads on cached trunk activations (PartialModel).
    train_batches.epoch(e, start) yields (inputs, labels) for net(**inputs); val_batches.ordered(b) likewise.
    `state` is updated in place, so whoever holds it at a yield can checkpoint it.
    """
    ddp = ddp or Dist()
    max_steps = cfg.train.max_steps
    for epoch in range(state.epoch, cfg.train.epochs):
        t0 = time.perf_counter()
        net.train()
        for inputs, labels in train_batches.epoch(epoch, start=state.batch):
            with autocast():
                out = net(**inputs)  # logits (b, C) and embeddings (b, D) per modality, b = B / world
                if ddp.world_size > 1:
                    out, labels = gather_outputs(out, labels, ddp)  # (B, ...): the global batch
                loss, losses = objective(out, labels, cfg)
            scaler.scale(loss * ddp.world_size).backward()  # DDP averages gradients over ranks
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            state.batch += 1
            state.step += 1
            for name, value in losses.items():
                state.sums[name] = state.sums.get(name, 0.0) + value
            yield StepResult(epoch, state.batch, state.step, losses)
            if max_steps and state.step >= max_steps:
                break
        train = {name: total / max(state.batch, 1) for name, total in state.sums.items()}
        val = validate(val_net, val_batches, cfg, autocast) if val_batches is not None else {}
        score = val.get("balanced_accuracy_fused", 0.0)
        improved = val_batches is not None and score > state.best_score
        if improved:
            state.best_score, state.best_epoch = score, epoch + 1
        state.epoch, state.batch, state.sums = epoch + 1, 0, {}
        yield EpochResult(epoch + 1, state.step, train, val, improved, time.perf_counter() - t0)
        if max_steps and state.step >= max_steps:
            return


# ---- around the loop: the run -------------------------------------------------------------------------------


@dataclass
class TrainResult:
    version: str | None  # None when stopped early or on a non-zero rank
    run_dir: Path
    metrics: dict[str, float]
    stopped: bool = False
    state: LoopState | None = None


@dataclass
class RunData:
    """What a run trains and validates on, and the model and module that learn."""

    train_set: CaseSet
    val_set: CaseSet
    model: MultimodalModel
    module: nn.Module  # what learns and what a checkpoint holds: the heads, the PartialModel, or the whole model
    train_batches: Any
    val_batches: Any | None
    cache: dict[str, Any] = dataclasses.field(default_factory=dict)  # partial: what the activation cache cost


class _StopFlag:
    """Set by SIGTERM; the run checks it at the next step boundary (every rank agrees through an all-reduce)."""

    def __init__(self) -> None:
        self.set = False
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        with contextlib.suppress(ValueError):  # only the main thread may install handlers
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.set = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def agreed(self, ddp: Dist, device: torch.device) -> bool:
        if ddp.world_size == 1:
            return self.set
        flag = torch.tensor([float(self.set)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def _say(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_jsonl(path: Path, max_step: int) -> None:
    """Keep the lines up to `max_step`: a run that crashed after logging but before checkpointing logs them again."""
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line).get("step", 0) <= max_step]
        path.write_text("".join(line + "\n" for line in kept))


def resume_config(cfg: Config, run_dir: Path, sets: Sequence[str] = ()) -> Config:
    """The run's own config (run_dir/config.toml) with this machine's home and runtime, and `sets` on top."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise TrainError(f"{run_dir}: no {CONFIG_FILE}; is it a training run directory?")
    resumed = config_from_toml(path, home=cfg.home)
    resumed = dataclasses.replace(resumed, runtime=cfg.runtime)
    overrides = dict(s.split("=", 1) for s in sets if "=" in s)
    return resumed.replace(**overrides) if overrides else resumed


def _training_texts(case_set: CaseSet) -> list[str]:
    return [note for s in case_set.strategies for note in case_set.notes[s] if note]


def _build(cfg: Config, train_set: CaseSet, device: torch.device) -> tuple[MultimodalModel, nn.Module]:
    """The model, and the module that learns: its heads, its PartialModel (towers' tops and heads), or itself."""
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank and in every resumed run
    model = build_model(cfg.model, DX_CLASSES, texts=_training_texts(train_set))
    module: nn.Module = model
    if cfg.train.finetune == "heads":
        model.freeze_backbones()
        module = model.heads
    elif cfg.train.finetune == "partial":
        module = model.split_towers(*partial_split(cfg))[2]
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, module


def _batches(
    cfg: Config,
    store: CaseStore,
    model: MultimodalModel,
    case_set: CaseSet,
    ddp: Dist,
    device: torch.device,
    train: bool,
    cache: dict[str, Any],
) -> FeatureBatches | PartialBatches | ImageTextBatches:
    t = cfg.train
    rank, world = (ddp.rank, ddp.world_size) if train else (0, 1)
    common = {"balanced": t.balanced_sampling, "seed": t.seed, "device": device, "rank": rank, "world_size": world}
    if t.finetune in ("heads", "partial"):
        if ddp.world_size > 1 and not ddp.main:
            dist.barrier()  # rank 0 fills the cache first; the others then only read it
        if t.finetune == "heads":
            images, texts = cached_features(model, store, case_set, cfg.cache_dir, device, num_workers=t.num_workers)
            batches: Any = FeatureBatches(case_set, images, texts, t.batch_size, **common)
        else:
            batches = partial_batches(cfg, store, model, case_set, device, train, common, cache)
        if ddp.world_size > 1 and ddp.main:
            dist.barrier()
        return batches
    augment = t.augment and train
    return ImageTextBatches(store, case_set, model, t.batch_size, augment=augment, num_workers=t.num_workers, **common)


def load_run_data(cfg: Config, ddp: Dist, device: torch.device) -> RunData:
    """The training and validation cases, the model, and their batch sources; TrainError when there is too little."""
    t = cfg.train
    with CaseStore(cfg.home) as store:
        strategies = t.note_strategies
        train_set = load_case_set(store, "train", DX_CLASSES, strategies, t.train_domains, t.source)
        val_set = load_case_set(store, "val", DX_CLASSES, strategies, t.train_domains, t.source)
        if len(train_set) < t.batch_size:
            raise TrainError(
                f"{len(train_set)} training cases (split train, notes {'/'.join(strategies)}"
                f"{', domains ' + '/'.join(t.train_domains) if t.train_domains else ''}"
                f"{', source ' + t.source if t.source else ''}) is fewer than one batch of {t.batch_size}; "
                f"import or synthesise data first (python -m mmcore synth --n 1400)"
            )
        for name, s in (("train", train_set), ("val", val_set)):
            skipped = "; ".join(f"{n} {reason}" for reason, n in s.skipped.items()) or "none"
            _say(
                f"{name}: {len(s)} cases ({', '.join(f'{k} {v}' for k, v in s.summary()['dx'].items())}); "
                f"skipped: {skipped}"
            )
        model, module = _build(cfg, train_set, device)
        if t.finetune == "heads":
            _say(
                "frozen backbones: encoder features are computed once and cached in "
                f"{cfg.cache_dir / 'features'}; only the heads train, with no augmentation"
            )
        elif t.finetune == "partial":
            blocks, layers = partial_split(cfg)
            _say(
                f"partial fine-tuning: the last {blocks} image blocks and {layers} text layers train with the heads, "
                f"on trunk activations computed once and cached in {cfg.cache_dir / 'activations'}"
            )
        cache: dict[str, Any] = {}
        train_batches = _batches(cfg, store, model, train_set, ddp, device, True, cache)
        val_batches = _batches(cfg, store, model, val_set, ddp, device, False, cache) if len(val_set) else None
    return RunData(train_set, val_set, model, module, train_batches, val_batches, cache)


def _wrap(module: nn.Module, cfg: Config, ddp: Dist, device: torch.device) -> nn.Module:
    """The module as the loop drives it: DDP-wrapped under torchrun."""
    if ddp.world_size == 1:
        return module
    trains_towers = cfg.train.finetune != "heads"
    if device.type == "cuda" and trains_towers:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)  # per-GPU batches are small: share BN statistics
    # A pooled tower leaves parts unused (e.g. BERT's pooler under mean pooling): let DDP find them.
    return nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=trains_towers
    )


def _amp(cfg: Config, device: torch.device) -> tuple[Callable[[], Any], torch.amp.GradScaler, str]:
    """The autocast context factory, the grad scaler (float16 only) and the AMP dtype's name ("" without AMP)."""
    use_amp = cfg.train.amp and device.type == "cuda"
    dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=dtype, enabled=use_amp)

    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and dtype == torch.float16)
    return autocast, scaler, str(dtype).removeprefix("torch.") if use_amp else ""


def run_training(
    cfg: Config, run_dir: Path, *, resume: bool = False, promote: bool = False, sets: Sequence[str] = ()
) -> TrainResult:
    """Train as `cfg` says, checkpointing into `run_dir`; register (and with `promote`, promote) the version.

    resume: continue from run_dir's checkpoint, with the run's own config and `sets` on top (e.g. more epochs).
    Under torchrun this runs on every rank; only rank 0 writes files and registers the version.
    """
    ddp, device = init_distributed(cfg.runtime.device)
    run_dir = Path(run_dir)
    checkpoint = None
    if resume:
        cfg = resume_config(cfg, run_dir, sets)
        try:
            checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)
        except CheckpointError as e:
            raise TrainError(str(e)) from None
        if ddp.main:
            remove_stale_temp_files(run_dir)
        if checkpoint["world_size"] != ddp.world_size:
            _say(
                f"note: the checkpoint was written by {checkpoint['world_size']} process(es), this run has "
                f"{ddp.world_size}; the data order continues, the random augmentations do not repeat exactly"
            )
    elif (run_dir / CHECKPOINT_FILE).exists():
        raise TrainError(f"{run_dir} already holds a run; continue it with --resume or choose another --run-dir")
    t = cfg.train
    if t.batch_size % ddp.world_size:
        raise TrainError(f"train.batch_size {t.batch_size} (the global batch) must divide by {ddp.world_size} ranks")
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)

    data = load_run_data(cfg, ddp, device)
    net = _wrap(data.module, cfg, ddp, device)  # DDP-wrapped under torchrun
    params = [p for p in data.module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay, amsgrad=t.amsgrad)
    autocast, scaler, amp_name = _amp(cfg, device)
    if checkpoint is not None:
        state = restore(checkpoint, data.module, optimizer, scaler, ddp, device)
        _say(f"resuming {run_dir} at epoch {state.epoch + 1}, batch {state.batch} (step {state.step})")
    else:
        state = LoopState()
        torch.manual_seed(t.seed * 1000 + ddp.rank)  # augmentation and dropout differ between ranks
    if ddp.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / CONFIG_FILE)
        if data.cache:
            (run_dir / CACHE_FILE).write_text(json.dumps(data.cache, indent=2) + "\n")
        for name in (METRICS_FILE, STEPS_FILE):
            _truncate_jsonl(run_dir / name, state.step)
    summary_path = run_dir / SUMMARY_FILE
    if checkpoint is not None and state.epoch >= t.epochs and summary_path.is_file():
        done = json.loads(summary_path.read_text())
        _say(f"{run_dir} already finished ({done['version']}); nothing to do")
        return TrainResult(done["version"], run_dir, done.get("validation", {}), state=state)

    steps_per_epoch = data.train_batches.steps_per_epoch
    total = min(t.epochs * steps_per_epoch, t.max_steps or math.inf)
    _say(
        f"training on {device} x {ddp.world_size}: {t.epochs} epochs x {steps_per_epoch} steps of {t.batch_size}"
        f"{' (AMP ' + amp_name + ')' if amp_name else ''} -> {run_dir}"
    )
    started = time.perf_counter()
    bar = tqdm(total=total, initial=state.step, desc="train", unit="step", file=sys.stderr, disable=not ddp.main)
    ckpt_path = run_dir / CHECKPOINT_FILE
    stopped = False
    loop = train_loop(
        net, optimizer, scaler, data.train_batches, data.val_batches, data.module, cfg, state, ddp, autocast
    )
    with _StopFlag() as stop:
        for result in loop:
            if isinstance(result, StepResult):
                bar.update(1)
                bar.set_postfix(epoch=result.epoch + 1, loss=f"{result.losses['total']:.3f}")
                if ddp.main:
                    _append_jsonl(
                        run_dir / STEPS_FILE,
                        {"step": result.step, "epoch": result.epoch + 1, "batch": result.batch, **result.losses},
                    )
                if stop.agreed(ddp, device):
                    save_checkpoint(ckpt_path, data.module, optimizer, scaler, state, cfg, ddp, device)
                    stopped = True
                    break
                continue
            record = _epoch_record(result, time.perf_counter() - started)
            if ddp.main:
                _append_jsonl(run_dir / METRICS_FILE, record)
                if result.improved:
                    save_best(data.module, run_dir / BEST_FILE)
            save_checkpoint(ckpt_path, data.module, optimizer, scaler, state, cfg, ddp, device)
            if ddp.main:
                _say(f"epoch {result.epoch}/{t.epochs}: train loss {record['train_loss']:.4f}, {_val_text(result)}")
    bar.close()
    if stopped:
        if ddp.main:
            _say(
                f"stopped by SIGTERM at epoch {state.epoch + 1}, batch {state.batch} (step {state.step}); checkpoint "
                f"saved to {ckpt_path}; continue with: python -m mmcore train --resume --run-dir {run_dir}"
            )
        return TrainResult(None, run_dir, {}, stopped=True, state=state)
    if not ddp.main:
        return TrainResult(None, run_dir, {}, state=state)
    from mmcore.register import register_run

    seconds = time.perf_counter() - started
    if isinstance(data.module, PartialModel):
        best = run_dir / BEST_FILE
        best_weights = best if best.is_file() and state.best_epoch else None  # what register_run will load
        fill_trained_features(
            cfg, data.model, data.module, (data.train_batches, data.val_batches), best_weights, device
        )
    version, metrics = register_run(cfg, data, run_dir, state, ddp, device, seconds, amp_name, promote)
    return TrainResult(version, run_dir, metrics, state=state)


def _epoch_record(result: EpochResult, elapsed: float) -> dict[str, Any]:
    return {
        "epoch": result.epoch,
        "step": result.step,
        "train_loss": result.train.get("total"),
        **{f"train_{k}": v for k, v in result.train.items() if k != "total"},
        **{f"val_{k}": v for k, v in result.val.items()},
        "best": result.improved,
        "seconds": round(result.seconds, 3),
        "elapsed": round(elapsed, 3),
    }


def _val_text(result: EpochResult) -> str:
    if not result.val:
        return "no validation cases"
    v = result.val
    return (
        f"val balanced acc {v['balanced_accuracy_fused']:.3f} (image {v['balanced_accuracy_image']:.3f}, "
        f"text {v['balanced_accuracy_text']:.3f})"
    )
