"""Training: `train_loop`, one straight loop that steps and yields numbers, and around it the run (`run_training`):
data, DDP, AMP, atomic checkpoints, resume, a clean stop on SIGTERM, metrics lines, and the model version a
finished run registers. `python -m mmcore train` is `cli_train`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from mmcore.cases import DX_CLASSES, CaseStore
from mmcore.config import Config, config_from_toml, config_to_dict, resolve_path, save_config
from mmcore.datasets import CaseSet, FeatureBatches, ImageTextBatches, cached_features, load_case_set
from mmcore.devices import resolve_device
from mmcore.evaluate import accuracy, balanced_accuracy
from mmcore.heads import MultimodalOutput
from mmcore.losses import total_loss
from mmcore.model import MultimodalModel, build_model

CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.safetensors"
CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"  # one line per epoch: what the admin page plots
STEPS_FILE = "steps.jsonl"  # one line per optimizer step
SUMMARY_FILE = "summary.json"
# Exit status of a run stopped by SIGTERM after it saved a checkpoint: 128 + 15, what a shell reports for a
# process killed by SIGTERM, so scripts can tell "stopped, resumable" (143) from "finished" (0) and "failed" (1).
EXIT_STOPPED = 143


class TrainError(ValueError):
    """The run cannot start (no data, bad configuration, nothing to resume); the message says why."""


# ---- the loop -------------------------------------------------------------------------------------------------


@dataclass
class LoopState:
    """Where the loop is: what a checkpoint must carry to continue exactly."""

    epoch: int = 0  # the epoch in progress (or the next to start)
    batch: int = 0  # batches of `epoch` already done
    step: int = 0  # optimizer steps done in all
    sums: dict[str, float] = field(default_factory=dict)  # loss terms summed over this epoch's batches
    best_score: float = -math.inf  # validation balanced accuracy (fused) of the best epoch so far
    best_epoch: int = 0


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


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


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
    return MultimodalOutput(**fields, learned_fusion=out.learned_fusion), cat(labels)


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
    ddp: Dist = Dist(),
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> Iterator[StepResult | EpochResult]:
    """Train from `state` to cfg.train.epochs (or max_steps), yielding after every step and every epoch.

    net: the trained module, maybe DDP-wrapped: the whole model, or only its heads on cached features.
    train_batches.epoch(e, start) yields (inputs, labels) for net(**inputs); val_batches.ordered(b) likewise.
    `state` is updated in place, so whoever holds it at a yield can checkpoint it.
    """
    max_steps = cfg.train.max_steps
    for epoch in range(state.epoch, cfg.train.epochs):
        t0 = time.perf_counter()
        net.train()
        for inputs, labels in train_batches.epoch(epoch, start=state.batch):
            with autocast():
                out = net(**inputs)  # logits (b, C) and embeddings (b, D) per modality, b = B / world
                if ddp.world_size > 1:
                    out, labels = gather_outputs(out, labels, ddp)  # (B, ...): the global batch
                loss = total_loss(out, labels, cfg.loss)
            scaler.scale(loss.total * ddp.world_size).backward()  # DDP averages gradients over ranks
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            losses = loss.to_dict()
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


def init_distributed(cfg: Config) -> tuple[Dist, torch.device]:
    """Join the torchrun job when there is one (NCCL on CUDA, else gloo); the device this rank trains on."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist(), resolve_device(cfg.runtime.device)
    ddp = Dist(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(cfg.runtime.device)
    if device.type == "cuda":
        device = torch.device("cuda", ddp.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ddp, device


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


def _rng_state(device: torch.device) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def save_checkpoint(
    path: Path,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: LoopState,
    cfg: Config,
    ddp: Dist,
    device: torch.device,
) -> None:
    """Write the checkpoint atomically (temp file, then os.replace); every rank calls it, rank 0 writes.

    Content loads with torch.load(weights_only=True): tensors, numbers, strings, lists and dicts only.
    """
    rng = [_rng_state(device)]
    if ddp.world_size > 1:
        rng = [None] * ddp.world_size
        dist.all_gather_object(rng, _rng_state(device))  # each rank resumes with its own RNG
    if not ddp.main:
        return
    checkpoint = {
        "model": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "state": dataclasses.asdict(state),
        "rng": rng,
        "config": config_to_dict(cfg),
        "world_size": ddp.world_size,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by save_checkpoint (never unpickles anything but tensors and plain data)."""
    if not path.is_file():
        raise TrainError(f"{path}: no checkpoint to resume from")
    return torch.load(path, map_location="cpu", weights_only=True)


def _save_best(module: nn.Module, path: Path) -> None:
    from mmcore.model_store import save_weights

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_weights(module, tmp)
    os.replace(tmp, path)


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


def _build(cfg: Config, train_set: CaseSet, device: torch.device) -> MultimodalModel:
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank and in every resumed run
    model = build_model(cfg.model, DX_CLASSES, texts=_training_texts(train_set))
    if cfg.train.freeze_backbones:
        model.freeze_backbones()
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def _batches(
    cfg: Config,
    store: CaseStore,
    model: MultimodalModel,
    case_set: CaseSet,
    ddp: Dist,
    device: torch.device,
    train: bool,
) -> FeatureBatches | ImageTextBatches:
    t = cfg.train
    rank, world = (ddp.rank, ddp.world_size) if train else (0, 1)
    if t.freeze_backbones:
        if ddp.world_size > 1 and not ddp.main:
            dist.barrier()  # rank 0 fills the feature cache first; the others then only read it
        images, texts = cached_features(model, store, case_set, cfg.cache_dir, device, num_workers=t.num_workers)
        if ddp.world_size > 1 and ddp.main:
            dist.barrier()
        return FeatureBatches(
            case_set,
            images,
            texts,
            t.batch_size,
            balanced=t.balanced_sampling,
            seed=t.seed,
            device=device,
            rank=rank,
            world_size=world,
        )
    return ImageTextBatches(
        store,
        case_set,
        model,
        t.batch_size,
        augment=t.augment and train,
        balanced=t.balanced_sampling,
        seed=t.seed,
        device=device,
        num_workers=t.num_workers,
        rank=rank,
        world_size=world,
    )


def run_training(
    cfg: Config, run_dir: Path, *, resume: bool = False, promote: bool = False, sets: Sequence[str] = ()
) -> TrainResult:
    """Train as `cfg` says, checkpointing into `run_dir`; register (and maybe promote) the model version.

    resume: continue from run_dir's checkpoint, with the run's own config and `sets` on top (e.g. more epochs).
    Under torchrun this runs on every rank; only rank 0 writes files and registers the version.
    """
    ddp, device = init_distributed(cfg)
    run_dir = Path(run_dir)
    checkpoint = None
    if resume:
        cfg = resume_config(cfg, run_dir, sets)
        checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)
        if ddp.main:  # a run killed while writing leaves its half-written temp file; the checkpoint is whole
            for stale in run_dir.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
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
        model = _build(cfg, train_set, device)
        if t.freeze_backbones:
            _say(
                "frozen backbones: encoder features are computed once and cached in "
                f"{cfg.cache_dir / 'features'}; only the heads train, with no augmentation"
            )
        train_batches = _batches(cfg, store, model, train_set, ddp, device, train=True)
        val_batches = _batches(cfg, store, model, val_set, ddp, device, train=False) if len(val_set) else None

    module: nn.Module = model.heads if t.freeze_backbones else model  # what learns, and what a checkpoint holds
    net = module
    if ddp.world_size > 1:
        if device.type == "cuda" and not t.freeze_backbones:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)  # per-GPU batches are small: share BN statistics
        # A pooled tower leaves parts unused (e.g. BERT's pooler under mean pooling): let DDP find them.
        net = nn.parallel.DistributedDataParallel(
            net,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=not t.freeze_backbones,
        )
    optimizer = torch.optim.Adam(
        [p for p in module.parameters() if p.requires_grad], lr=t.lr, weight_decay=t.weight_decay
    )
    use_amp = t.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp)

    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)

    state = LoopState()
    if checkpoint is not None:
        module.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        state = LoopState(**checkpoint["state"])
        rng = checkpoint["rng"][min(ddp.rank, len(checkpoint["rng"]) - 1)]
        torch.set_rng_state(rng["torch"])
        if device.type == "cuda" and rng["cuda"] is not None:
            torch.cuda.set_rng_state(rng["cuda"], device)
        _say(f"resuming {run_dir} at epoch {state.epoch + 1}, batch {state.batch} (step {state.step})")
    else:
        torch.manual_seed(t.seed * 1000 + ddp.rank)  # augmentation and dropout differ between ranks
    if ddp.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / CONFIG_FILE)
        for name in (METRICS_FILE, STEPS_FILE):
            _truncate_jsonl(run_dir / name, state.step)
    summary_path = run_dir / SUMMARY_FILE
    if checkpoint is not None and state.epoch >= t.epochs and summary_path.is_file():
        done = json.loads(summary_path.read_text())
        _say(f"{run_dir} already finished ({done['version']}); nothing to do")
        return TrainResult(done["version"], run_dir, done["metrics"], state=state)

    steps_per_epoch = train_batches.steps_per_epoch
    total = min(t.epochs * steps_per_epoch, t.max_steps or math.inf)
    _say(
        f"training on {device} x {ddp.world_size}: {t.epochs} epochs x {steps_per_epoch} steps of {t.batch_size}"
        f"{' (AMP ' + str(amp_dtype).removeprefix('torch.') + ')' if use_amp else ''} -> {run_dir}"
    )
    started = time.perf_counter()
    bar = tqdm(total=total, initial=state.step, desc="train", unit="step", file=sys.stderr, disable=not ddp.main)
    ckpt_path = run_dir / CHECKPOINT_FILE
    stopped = False
    with _StopFlag() as stop:
        for result in train_loop(net, optimizer, scaler, train_batches, val_batches, module, cfg, state, ddp, autocast):
            if isinstance(result, StepResult):
                bar.update(1)
                bar.set_postfix(epoch=result.epoch + 1, loss=f"{result.losses['total']:.3f}")
                if ddp.main:
                    _append_jsonl(
                        run_dir / STEPS_FILE,
                        {"step": result.step, "epoch": result.epoch + 1, "batch": result.batch, **result.losses},
                    )
                if stop.agreed(ddp, device):
                    save_checkpoint(ckpt_path, module, optimizer, scaler, state, cfg, ddp, device)
                    stopped = True
                    break
                continue
            record = {
                "epoch": result.epoch,
                "step": result.step,
                "train_loss": result.train.get("total"),
                **{f"train_{k}": v for k, v in result.train.items() if k != "total"},
                **{f"val_{k}": v for k, v in result.val.items()},
                "best": result.improved,
                "seconds": round(result.seconds, 3),
                "elapsed": round(time.perf_counter() - started, 3),
            }
            if ddp.main:
                _append_jsonl(run_dir / METRICS_FILE, record)
                if result.improved:
                    _save_best(module, run_dir / BEST_FILE)
            save_checkpoint(ckpt_path, module, optimizer, scaler, state, cfg, ddp, device)
            val = (
                f"val balanced acc {result.val['balanced_accuracy_fused']:.3f} (image "
                f"{result.val['balanced_accuracy_image']:.3f}, text {result.val['balanced_accuracy_text']:.3f})"
                if result.val
                else "no validation cases"
            )
            if ddp.main:
                _say(f"epoch {result.epoch}/{t.epochs}: train loss {record['train_loss']:.4f}, {val}")
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
    return _register(
        cfg, model, module, run_dir, train_set, val_set, state, ddp, device, time.perf_counter() - started, promote
    )


def _register(
    cfg: Config,
    model: MultimodalModel,
    module: nn.Module,
    run_dir: Path,
    train_set: CaseSet,
    val_set: CaseSet,
    state: LoopState,
    ddp: Dist,
    device: torch.device,
    seconds: float,
    promote: bool,
) -> TrainResult:
    """Load the best epoch's weights, save the model version with its card, promote, audit, write the summary."""
    from mmcore.audit import AuditLog
    from mmcore.model_store import load_weights, save_version, set_active

    best = run_dir / BEST_FILE
    if best.is_file() and state.best_epoch:
        load_weights(module, best.read_bytes())
    selected = state.best_epoch or state.epoch
    lines = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip()]
    chosen = next((r for r in lines if r["epoch"] == selected), lines[-1] if lines else {})
    metrics = {k: v for k, v in chosen.items() if k in _CARD_METRICS}
    t = cfg.train
    metadata = {
        "training_data": {
            "train": train_set.summary(),
            "val": val_set.summary(),
            "note_strategies": list(t.note_strategies),
            "train_domains": list(t.train_domains) or "all",
            "source": t.source or "all",
        },
        "metrics": metrics,
        "training": {
            "run_dir": str(run_dir),
            "epochs": state.epoch,
            "steps": state.step,
            "selected_epoch": selected,
            "selection": "best validation balanced accuracy (fused)" if state.best_epoch else "last epoch",
            "freeze_backbones": t.freeze_backbones,
            "augment": t.augment and not t.freeze_backbones,
            "balanced_sampling": t.balanced_sampling,
            "batch_size": t.batch_size,
            "lr": t.lr,
            "world_size": ddp.world_size,
            "device": str(device),
            "amp": t.amp and device.type == "cuda",
            "seconds": round(seconds, 1),
        },
    }
    model = model.to("cpu").to(memory_format=torch.contiguous_format)
    version = save_version(model, cfg, metadata)
    if promote:
        set_active(cfg, version)
    AuditLog(cfg.audit_path).append(
        "train", version=version, run_dir=str(run_dir), promoted=promote, epochs=state.epoch, steps=state.step
    )
    summary = {"version": version, "run_dir": str(run_dir), "metrics": metrics, "promoted": promote}
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    _say(f"saved model version {version}{' (active)' if promote else ''}")
    return TrainResult(version, run_dir, metrics, state=state)


_CARD_METRICS = (
    "val_loss",
    "val_accuracy_fused",
    "val_balanced_accuracy_fused",
    "val_balanced_accuracy_image",
    "val_balanced_accuracy_text",
)


def cli_train(args: argparse.Namespace, cfg: Config) -> int:
    """`train [--resume] [--run-dir DIR] [--promote] [--json]`; exit 0 finished, 143 stopped by SIGTERM (resumable).

    Under `torchrun --nproc_per_node N -m mmcore train ...` every rank runs this; train.batch_size is the global
    batch, split evenly over the ranks.
    """
    from mmcore.cli import CliError, emit

    if args.resume and not args.run_dir:
        raise CliError("--resume needs --run-dir: the run directory holding checkpoint.pt")
    run_dir = (
        resolve_path(args.run_dir, base=cfg.home)
        if args.run_dir
        else cfg.home / "runs" / time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    )
    try:
        result = run_training(cfg, run_dir, resume=args.resume, promote=args.promote, sets=args.sets)
    except TrainError as e:
        raise CliError(str(e)) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if result.stopped:
        return EXIT_STOPPED
    if result.version is None:  # a non-zero rank: rank 0 reports
        return 0
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items() if isinstance(v, float))
    emit(
        args,
        {"version": result.version, "run_dir": str(result.run_dir), "metrics": result.metrics},
        f"{result.version} ({result.run_dir}): {metrics}",
    )
    return 0
