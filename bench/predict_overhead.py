"""Predict overhead: `Predictor.predict(bytes, note)` (intake, preprocessing, tokenisation, forward, softmax, audit
entry) against the bare model forward on ready tensors, for the default model (EfficientNet-Lite0 + MiniLM) on CPU.

    python bench/predict_overhead.py [--n 30] [--threads 1,2]

Every predict call gets an upload and a note it has not seen (the cold path: nothing cached); a predict and its bare
forward on the same inputs alternate (order flipped every other pair) so both see the same load. The warm path is a
Streamlit rerun: the same bytes and note again. Times are wall clock and this process's CPU time; with one torch
thread the CPU-time ratio is the work ratio whatever else runs on the machine, with two (the app's setting on our
2-core machines) the wall ratio is what a user waits. Writes bench/results/predict_overhead.md and .json.
Bar (the issue): predict at most 1.25x the bare forward.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from mmcore.audit import AuditLog, sha256_text
from mmcore.cases import DX_CLASSES
from mmcore.config import load_config
from mmcore.images import load_image
from mmcore.model import build_model
from mmcore.notes import write_note
from mmcore.predictor import Predictor
from mmcore.synthderm import generate_one

REPO = Path(__file__).resolve().parent.parent
BAR = 1.25
FORMATS = {
    "JPEG 600x450 (HAM10000's size)": ((600, 450), "JPEG"),
    "PNG 224x224 (the model's size)": ((224, 224), "PNG"),
    "JPEG 1600x1200 (a phone photo, downsized)": ((1600, 1200), "JPEG"),
}


def encode(image: Image.Image, size: tuple[int, int], fmt: str) -> bytes:
    buf = io.BytesIO()
    image.resize(size, Image.BICUBIC).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds): CPU time is the steadier of the two when others share the cores."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def ratio(a: list[tuple[float, float]], b: list[tuple[float, float]], k: int) -> float:
    """Median of a over median of b, on wall (k=0) or CPU (k=1) time."""
    return statistics.median(x[k] for x in a) / statistics.median(x[k] for x in b)


def ms(a: list[tuple[float, float]], k: int = 0) -> float:
    return round(statistics.median(x[k] for x in a) * 1e3, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="distinct uploads per format")
    parser.add_argument("--threads", default="1,2", help="torch thread counts to measure, comma-separated")
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]

    home = Path(tempfile.mkdtemp(prefix="mmderm-bench-"))
    cfg = load_config("default", env={"MMDERM_HOME": str(home)})
    torch.manual_seed(0)
    model = build_model(cfg.model, DX_CLASSES).eval()
    cases = [generate_one(i, seed=1, size=448) for i in range(args.n + 1)]
    notes = [write_note("clinical", sc.case, seed=i) for i, sc in enumerate(cases)]

    started = time.perf_counter()
    load_before = os.getloadavg()
    results = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for label, (size, fmt) in FORMATS.items():
            uploads = [encode(sc.image, size, fmt) for sc in cases]
            # A fresh Predictor (nothing cached), as pages get it minus the disk round trip of a saved version.
            predictor = Predictor(model, cfg, "bench", {})
            results.append({"upload": label, "threads": threads, **measure(predictor, uploads, notes, args.n, home)})
            print(f"{label}, {threads} thread(s): done", file=sys.stderr)
    load_after = os.getloadavg()
    shutil.rmtree(home, ignore_errors=True)  # the audit logs of the runs

    payload = {
        "command": f"python bench/predict_overhead.py --n {args.n} --threads {args.threads}",
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"Python {platform.python_version()}, {platform.platform()}",
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
        "model": f"{cfg.model.image_encoder} + {cfg.model.text_encoder}, random heads, {cfg.model.image_size} px",
        "bar": BAR,
        "results": results,
        "seconds_total": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "predict_overhead.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "predict_overhead.md").write_text(render(payload))
    print(render(payload))
    return 0


def measure(predictor: Predictor, uploads: list[bytes], notes: list[str], n: int, home: Path) -> dict:
    """Cold and warm predict against the bare forward on the same inputs, and the cost of each step alone."""
    model, transform = predictor.model, predictor.model.image_transform()
    tensors = [transform(load_image(b).image).unsqueeze(0) for b in uploads]  # (1, 3, S, S), as the Predictor has
    tokens = [model.tokenize([t]) for t in notes]

    def bare(i: int) -> None:
        with torch.inference_mode():
            model(tensors[i], **tokens[i])

    def predict(i: int) -> None:
        predictor.predict(uploads[i], notes[i])

    predict(n)  # warm-up on the spare case
    for i in range(n + 1):  # every input shape (note lengths differ) once, so no timed call pays a first-time cost
        bare(i)
    cold, forward, warm, warm_forward = [], [], [], []
    for i in range(n):  # alternate the order so neither always runs second
        first, second = (predict, bare) if i % 2 == 0 else (bare, predict)
        a, b = timed(lambda: first(i)), timed(lambda: second(i))  # noqa: B023 - called at once
        cold.append(a if first is predict else b)
        forward.append(b if first is predict else a)
    for i in range(n):  # a rerun: the same upload and note again (decoded and tokenised already)
        predict(i)  # the LRU keeps the 16 latest uploads: make sure this one is in it
        if i % 2 == 0:
            warm.append(timed(lambda: predict(i)))  # noqa: B023
            warm_forward.append(timed(lambda: bare(i)))  # noqa: B023
        else:
            warm_forward.append(timed(lambda: bare(i)))  # noqa: B023
            warm.append(timed(lambda: predict(i)))  # noqa: B023
    audit = AuditLog(home / "breakdown.jsonl")
    decoded = [load_image(b).image for b in uploads[:n]]
    parts = {
        "intake (load_image: sniff, decode, EXIF, rebuild, pixel SHA-256)": [
            timed(lambda b=b: load_image(b)) for b in uploads[:n]
        ],
        "preprocess (resize to 224, normalise)": [timed(lambda d=d: transform(d)) for d in decoded],
        "tokenise": [timed(lambda t=t: model.tokenize([t])) for t in notes[:n]],
        "audit append": [timed(lambda t=t: audit.append("predict", "", note_sha256=sha256_text(t))) for t in notes[:n]],
    }
    return {
        "upload_kb": round(statistics.median(len(b) for b in uploads) / 1024, 1),
        "bare_forward_ms": ms(forward),
        "bare_forward_cpu_ms": ms(forward, 1),
        "predict_cold_ms": ms(cold),
        "ratio_cold_wall": round(ratio(cold, forward, 0), 3),
        "ratio_cold_cpu": round(ratio(cold, forward, 1), 3),
        "predict_warm_ms": ms(warm),
        "ratio_warm_wall": round(ratio(warm, warm_forward, 0), 3),
        "ratio_warm_cpu": round(ratio(warm, warm_forward, 1), 3),
        "breakdown_ms": {k: ms(v) for k, v in parts.items()},
        "breakdown_cpu_ms": {k: ms(v, 1) for k, v in parts.items()},
    }


def render(p: dict) -> str:
    lines = [
        "# Predict overhead against the bare forward",
        "",
        f"Command: `{p['command']}` ({p['seconds_total']} s).",
        "",
        f"Machine: {p['machine']}. Load average before/after: {p['load_average']['before']} / "
        f"{p['load_average']['after']}: other jobs shared the 2 cores, so wall times are noisy. Every ratio compares "
        "calls that alternated with their reference. With one torch thread the CPU-time ratio (this process's CPU "
        "seconds) is the work ratio whatever else runs; with two threads (the app's setting here) the wall ratio is "
        "what a user waits, and it is the noisier.",
        "",
        f"Model: {p['model']}. Predict = `Predictor.predict(upload bytes, clinical note)`: intake of the untrusted "
        "bytes, preprocessing, tokenisation, one forward giving the image, note and fused logits, softmax, warnings "
        "and the audit entry. Bare forward = `model(images, input_ids, attention_mask)` under `torch.inference_mode` "
        "on the tensors the Predictor makes, made beforehand from the same inputs. Cold: an upload and a note never "
        "seen before (medians over the distinct uploads). Warm: the same upload and note again, as a Streamlit rerun "
        "sends them.",
        "",
        "| upload | KB | threads | bare forward ms (wall) | predict ms, cold (wall) | **cold ratio, CPU** | "
        "cold ratio, wall | warm ratio, CPU | warm ratio, wall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in p["results"]:
        lines.append(
            f"| {r['upload']} | {r['upload_kb']} | {r['threads']} | {r['bare_forward_ms']:.1f} | "
            f"{r['predict_cold_ms']:.1f} | **{r['ratio_cold_cpu']:.3f}** | {r['ratio_cold_wall']:.3f} | "
            f"{r['ratio_warm_cpu']:.3f} | {r['ratio_warm_wall']:.3f} |"
        )
    one = [r for r in p["results"] if r["threads"] == min(x["threads"] for x in p["results"])]
    lines += ["", f"Where the cold overhead goes ({one[0]['threads']} thread; each step alone, median CPU ms):", "",
              "| step | " + " | ".join(r["upload"] for r in one) + " |", "|---|" + "---|" * len(one)]  # fmt: skip
    for step in one[0]["breakdown_cpu_ms"]:
        cells = " | ".join(f"{r['breakdown_cpu_ms'][step]:.2f}" for r in one)
        lines.append(f"| {step} | {cells} |")
    lines.append("")
    lines += [
        "",
        "The cold overhead left is the intake and the resize, which grow with the upload's pixels while the forward "
        "does not (1 thread, steps alone, as a share of the bare forward's CPU time): "
        + "; ".join(
            f"{r['upload']}: {100 * sum(r['breakdown_cpu_ms'].values()) / r['bare_forward_cpu_ms']:.0f}%" for r in one
        )
        + ". Intake is `images.load_image`, the one way untrusted bytes become an image: it decodes every pixel, "
        "rebuilds the image from its bytes and hashes all pixels. A cold predict also reads its freshly decoded "
        "megabytes through the caches, so its forward runs a little slower than a bare forward in a tight loop.",
        "",
    ]
    for r in p["results"]:
        verdict = "meets" if r["ratio_cold_cpu"] <= p["bar"] else "MISSES"
        quietest = min(x["bare_forward_ms"] for x in p["results"] if x["threads"] == r["threads"])
        slowdown = r["bare_forward_ms"] / quietest
        disturbed = f" (disturbed: its bare forward took {slowdown:.1f}x the quietest row's)" if slowdown > 2 else ""
        lines.append(
            f"- {r['upload']}, {r['threads']} thread(s): cold {r['ratio_cold_cpu']:.3f}x CPU "
            f"({r['ratio_cold_wall']:.3f}x wall), {verdict} the {p['bar']}x bar{disturbed}."
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
