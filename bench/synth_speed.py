"""SynthDerm generation speed on ONE core (numpy/torch threads = 1, process pinned to one CPU).

    python bench/synth_speed.py [--n 300] [--size 224]

Writes bench/results/synth_speed.md and .json. Target: at least 30 images per second at 224 px.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from mmcore.cases import DOMAINS  # noqa: E402
from mmcore.images import encode_image  # noqa: E402
from mmcore.synthderm import generate  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 30.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="images per domain")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    core = sorted(os.sched_getaffinity(0))[0]
    os.sched_setaffinity(0, {core})
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    list(generate(5, seed=args.seed, size=args.size))  # warm-up: imports, caches
    rows = {}
    for domains in [(d,) for d in DOMAINS] + [DOMAINS]:
        name = domains[0] if len(domains) == 1 else "mixed"
        started, cpu = time.perf_counter(), time.process_time()
        images = [sc.image for sc in generate(args.n, seed=args.seed, domains=domains, size=args.size)]
        gen_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu
        started = time.perf_counter()
        for image in images:
            encode_image(image, "png")
        png_s = time.perf_counter() - started
        rows[name] = {
            "images": args.n,
            "images_per_s": round(args.n / gen_s, 1),
            "images_per_cpu_s": round(args.n / cpu_s, 1),
            "ms_per_image": round(1000 * gen_s / args.n, 2),
            "png_ms_per_image": round(1000 * png_s / args.n, 2),
        }
    command = "python bench/synth_speed.py " + " ".join(sys.argv[1:])
    payload = {
        "command": command.strip(),
        "size": args.size,
        "seed": args.seed,
        "core": core,
        "target_per_s": TARGET,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "results": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "synth_speed.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        "# SynthDerm generation speed (one core)",
        "",
        f"Command: `{payload['command']}` (numpy/torch threads = 1, process pinned to CPU {core}).",
        f"Image size {args.size} px, seed {args.seed}, {args.n} images per row. Target: {TARGET:.0f} images/s.",
        "Wall-clock rates drop when other jobs share the core; images per CPU-second (this process's own time on",
        "its one thread) is the steadier number. Both are from the same run.",
        "",
        "| domains | images/s (wall) | images/CPU-s | ms/image (wall) | x target (wall) | PNG encode ms/image |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['images_per_s']} | {r['images_per_cpu_s']} | {r['ms_per_image']} "
            f"| {r['images_per_s'] / TARGET:.1f} | {r['png_ms_per_image']} |"
        )
    lines += ["", "PNG encoding (what `synth` adds per case when it stores the image) is not in the rates above."]
    (RESULTS / "synth_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
