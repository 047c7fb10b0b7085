"""Case retrieval: recall@10 of Chroma's HNSW against exact NumPy search, and their latency ratio, at 10k and 100k.

    python bench/retrieval.py [--sizes 10000 100000] [--queries 200] [--m 16 32] [--ef 128 256 512 1024]

Data: unit vectors of dim 128 in 7 Gaussian clusters (noise norm about 1 around unit centres, so a point's cosine
to its centre is about 0.7) plus 10% uniform noise; queries are fresh draws of the same mixture. Every number comes
from mmcore.index (CaseIndex.search in "hnsw" and "exact" mode, exact_search as ground truth), all measured in one
run. Writes bench/results/retrieval.md and .json. The bar: recall@10 >= 0.99 at 100k with latency no worse than
exact search.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import chromadb
import numpy as np
from chromadb.api.shared_system_client import SharedSystemClient

from mmcore.cases import DX_CLASSES, Case
from mmcore.config import IndexConfig
from mmcore.index import RERANK_FACTOR, CaseIndex, exact_search

RESULTS = Path(__file__).resolve().parent / "results"
K = 10
BAR_RECALL = 0.99
VERSION = "bench"
# A filter that keeps about a tenth of the library, as a clinician narrowing by diagnosis and age would.
FILTER = {"dx": ["mel", "bcc"], "age": {"$gte": 40, "$lte": 70}}


def clustered_unit_vectors(n: int, dim: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(vectors (n, dim) unit float32, cluster labels (n,), -1 for noise): 7 Gaussian clusters plus 10% noise."""
    centres = np.random.default_rng(12345).normal(size=(7, dim))  # the same centres for library and queries
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, 7, n)
    x = centres[labels] + rng.normal(scale=1 / np.sqrt(dim), size=(n, dim))
    noise = rng.random(n) < 0.1
    x[noise] = rng.normal(size=(int(noise.sum()), dim))
    labels[noise] = -1
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def fake_cases(labels: np.ndarray, rng: np.random.Generator) -> list[Case]:
    """Cases whose diagnosis follows the cluster (noise: any) and whose age is uniform 18-90."""
    dx = [DX_CLASSES[label] if label >= 0 else DX_CLASSES[rng.integers(7)] for label in labels]
    ages = rng.integers(18, 91, len(labels))
    return [
        Case(case_id=f"c{i:06d}", source="bench", dx=d, age=float(a), sex="male" if i % 2 else "female")
        for i, (d, a) in enumerate(zip(dx, ages, strict=True))
    ]


def keep(case: Case) -> bool:
    return case.dx in FILTER["dx"] and case.age is not None and 40 <= case.age <= 70


def against_exact(fn, exact_fn, queries: np.ndarray) -> tuple[list, float, float]:
    """fn(q) and exact_fn(q) called alternately, one query at a time, so both see the same load on a shared
    machine: (fn's results, fn's median seconds, exact_fn's median seconds)."""
    out, fn_s, exact_s = [], [], []
    for q in queries:
        started = time.perf_counter()
        out.append(fn(q))
        fn_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        exact_fn(q)
        exact_s.append(time.perf_counter() - started)
    return out, statistics.median(fn_s), statistics.median(exact_s)


def best_of(fn, arg, repeats: int = 3) -> float:
    """The fastest of `repeats` calls fn(arg), in seconds, after a warm-up call."""
    fn(arg)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn(arg)
        seconds.append(time.perf_counter() - started)
    return min(seconds)


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def open_index(path: Path, search: str, **settings) -> CaseIndex:
    # Chroma keeps a loaded HNSW index per process; forgetting the client makes the next query load it again,
    # with the ef_search CaseIndex just wrote into the collection's configuration.
    SharedSystemClient.clear_system_cache()
    return CaseIndex(path, IndexConfig(**settings), search=search)


def bench_size(n: int, args: argparse.Namespace, workdir: Path) -> dict:
    rng = np.random.default_rng(args.seed + n)
    vectors, labels = clustered_unit_vectors(n, args.dim, rng)
    queries, _ = clustered_unit_vectors(args.queries, args.dim, rng)
    cases = fake_cases(labels, rng)
    ids = np.array([c.case_id for c in cases])
    rows_kept = np.array([i for i, c in enumerate(cases) if keep(c)])

    # ground truth and the exact baseline: raw NumPy over the in-memory matrix
    truth_idx, _ = exact_search(queries, vectors, K)
    truth = [list(ids[row]) for row in truth_idx]
    filtered_idx, _ = exact_search(queries, vectors[rows_kept], K)
    truth_filtered = [list(ids[rows_kept[row]]) for row in filtered_idx]

    def exact(q: np.ndarray) -> tuple:
        return exact_search(q, vectors, K)

    _, _, exact_s = against_exact(exact, exact, queries)  # warm-up
    exact_batch_s = best_of(exact, queries) / len(queries)
    print(f"[{n}] exact NumPy: {exact_s * 1e3:.3f} ms/query, batched {exact_batch_s * 1e3:.4f}", flush=True)

    rows: list[dict] = []

    def measure(kind: str, index: CaseIndex, m: int | None, ef: int | None, where: dict | None = None) -> None:
        nq = args.filtered_queries if where else len(queries)  # Chroma's filtered queries are slow: fewer of them
        index.search(VERSION, queries[0], k=K, where=where)  # load the index (or the vectors) before timing
        hits, seconds, base = against_exact(
            lambda q: [h.case_id for h in index.search(VERSION, q, k=K, where=where)], exact, queries[:nq]
        )
        found = recall(hits, (truth if where is None else truth_filtered)[:nq])
        r = {"n": n, "kind": kind, "max_neighbors": m, "ef_search": ef, "queries": nq, "recall@10": round(found, 4),
             "ms": round(seconds * 1e3, 3), "exact_ms": round(base * 1e3, 3),
             "ratio": round(seconds / base, 2)}  # fmt: skip
        if kind == "hnsw":  # Chroma's own batched query: every query in one call
            col = index._collection(VERSION, "image")
            chroma_s = best_of(lambda qs: col.query(query_embeddings=qs, n_results=K, include=[]), queries)
            r["batched_ratio"] = round(chroma_s / best_of(exact, queries), 2)
        rows.append(r)
        print(f"[{n}] {json.dumps(r)}", flush=True)

    builds = {}
    for m in args.m:
        path = workdir / f"n{n}-m{m}"
        shutil.rmtree(path, ignore_errors=True)
        settings = {"ef_construction": args.ef_construction, "max_neighbors": m}
        with open_index(path, "hnsw", ef_search=args.ef[0], **settings) as index:
            started = time.perf_counter()
            index.upsert(VERSION, "image", cases, vectors)
            builds[m] = round(time.perf_counter() - started, 1)
        print(f"[{n}] built M={m} in {builds[m]} s", flush=True)
        for ef in args.ef:
            for rerank in (False, True):
                with open_index(path, "hnsw", ef_search=ef, exact_rerank=rerank, **settings) as index:
                    measure("hnsw+rerank" if rerank else "hnsw", index, m, ef)
        if m == args.filtered_m:  # the filtered query at the largest ef
            with open_index(path, "hnsw", ef_search=args.ef[-1], exact_rerank=False, **settings) as index:
                measure("hnsw, filtered", index, m, args.ef[-1], FILTER)

    # the exact path of CaseIndex (vectors held in memory, filters as NumPy masks) on the last build
    with open_index(workdir / f"n{n}-m{args.m[-1]}", "exact") as index:
        measure("exact (CaseIndex)", index, None, None)
        measure("exact (CaseIndex), filtered", index, None, None, FILTER)
    exact_ms = statistics.median(r["exact_ms"] for r in rows)  # over every loop it ran in, beside the others
    return {"n": n, "exact_ms": round(exact_ms, 3), "exact_batched_ms": round(exact_batch_s * 1e3, 4),
            "build_s": builds, "filtered_fraction": round(len(rows_kept) / n, 3), "rows": rows}  # fmt: skip


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "chromadb": chromadb.__version__,
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],  # at the end of the run: others share the cores
    }


def verdict(result: dict) -> list[str]:
    """What the largest size says about the bar, as bullet points."""
    last = result["sizes"][-1]
    rows = {(r["kind"], r["max_neighbors"], r["ef_search"]): r for r in last["rows"]}
    hnsw = [r for r in last["rows"] if r["kind"] in ("hnsw", "hnsw+rerank")]
    good = [r for r in hnsw if r["recall@10"] >= BAR_RECALL]
    lines = [f"- At {last['n']:,} vectors exact NumPy search takes {last['exact_ms']} ms per query (median over "
             f"the loops above; {last['exact_batched_ms']} ms per query batched)."]  # fmt: skip
    if any(r["ratio"] <= 1.0 for r in good):
        top = min((r for r in good if r["ratio"] <= 1.0), key=lambda r: r["ratio"])
        lines.append(f"- HNSW meets the bar at M={top['max_neighbors']}, ef_search={top['ef_search']} "
                     f"({top['kind']}): recall@10 {top['recall@10']}, latency ratio {top['ratio']}.")  # fmt: skip
    elif good:
        top = min(good, key=lambda r: r["ratio"])
        lines.append(f"- HNSW does not meet the bar. Its fastest setting with recall@10 >= {BAR_RECALL} is "
                     f"M={top['max_neighbors']}, ef_search={top['ef_search']} ({top['kind']}, recall "
                     f"{top['recall@10']}), at {top['ratio']}x the latency of exact search.")  # fmt: skip
    else:
        top = max(hnsw, key=lambda r: (r["recall@10"], -r["ratio"]))
        lines.append(f"- HNSW does not meet the bar: no setting reaches recall@10 {BAR_RECALL}; the best is "
                     f"{top['recall@10']} (M={top['max_neighbors']}, ef_search={top['ef_search']}) at "
                     f"{top['ratio']}x the latency of exact search.")  # fmt: skip
    pairs = [(r, rows[("hnsw+rerank", r["max_neighbors"], r["ef_search"])]) for r in hnsw if r["kind"] == "hnsw"]
    gained = max(rr["recall@10"] - r["recall@10"] for r, rr in pairs)
    lines.append(f"- Exact re-rank (k x {RERANK_FACTOR} candidates) gains at most {gained:+.4f} recall@10 over plain "
                 "HNSW: Chroma already returns exact cosine distances for its candidates, so re-scoring can only "
                 "help when k x factor exceeds ef_search; it adds the cost of fetching the embeddings.")  # fmt: skip
    exact = rows.get(("exact (CaseIndex)", None, None))
    exact_f = rows.get(("exact (CaseIndex), filtered", None, None))
    hnsw_f = next((r for r in last["rows"] if r["kind"] == "hnsw, filtered"), None)
    if exact and exact_f:
        lines.append(f"- CaseIndex's exact path: recall 1, {exact['ms']} ms per query (ratio {exact['ratio']}, the "
                     f"cost of building hits); filtered {exact_f['ms']} ms.")  # fmt: skip
    if hnsw_f and exact_f:
        lines.append(f"- Filtered, Chroma's HNSW path takes {hnsw_f['ms']} ms per query (recall "
                     f"{hnsw_f['recall@10']}) against {exact_f['ms']} ms for the exact path's NumPy mask.")  # fmt: skip
    return lines


def write(result: dict, command: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "retrieval.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = [
        "# Case retrieval: Chroma HNSW against exact NumPy search",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {m['affinity']} CPU cores, no GPU, shared with other work (load average {m['load_average']} "
        f"at the end of the run); Python {m['python']}, NumPy {m['numpy']}, chromadb {m['chromadb']}, "
        f"{m['platform']}. Run time {result['seconds']} s. Absolute timings are noisy here: read the ratios, which "
        "compare numbers measured side by side.",
        "",
        f"Data: dim {result['dim']}, 7 Gaussian clusters + 10% uniform noise, {result['queries']} held-out queries, "
        f"k = {K}, ef_construction {result['ef_construction']}. Recall@10 is against exact search. Ratio is the "
        "median single-query latency over that of exact NumPy search (`exact_search` over the whole in-memory "
        "matrix), the two called alternately query by query so that both see the same load on a shared machine; "
        "batched ratio compares one Chroma call holding every query with one NumPy matmul. Every Chroma number goes "
        "through `CaseIndex.search` (metadata included, as the app pays). `hnsw+rerank` fetches "
        f"k x {RERANK_FACTOR} candidates and re-scores them exactly. Filtered rows use `{json.dumps(FILTER)}` "
        "(recall against exact search over the filtered subset).",
        "",
    ]
    for size in result["sizes"]:
        lines += [
            f"## {size['n']:,} vectors",
            "",
            f"Exact NumPy: {size['exact_ms']} ms/query single, {size['exact_batched_ms']} ms/query batched. "
            "Build (upsert with metadata): " + ", ".join(f"M={m} {s} s" for m, s in size["build_s"].items()) + ". "
            f"The filter keeps {size['filtered_fraction']:.1%} of cases.",
            "",
            "| search | max_neighbors | ef_search | queries | recall@10 | ms/query | exact ms, same loop | ratio "
            "| batched ratio |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in size["rows"]:
            lines.append(
                f"| {r['kind']} | {r['max_neighbors'] or '-'} | {r['ef_search'] or '-'} | {r['queries']} "
                f"| {r['recall@10']:.4f} | {r['ms']} | {r['exact_ms']} | {r['ratio']} | {r.get('batched_ratio', '-')} |"
            )
        lines.append("")
    lines += ["## Verdict", "", *verdict(result), "", *DECISION, ""]
    (RESULTS / "retrieval.md").write_text("\n".join(lines))


DECISION = [
    "## Defaults chosen",
    "",
    '- `search = "exact"` (proposed `IndexConfig.search`; CaseIndex uses it until the field exists). CaseIndex '
    "keeps each collection's vectors in memory (51 MB per 100k x 128), ranks them with one NumPy product and "
    "filters with NumPy masks over the same metadata Chroma stores, so recall is 1 by construction and, up to "
    "100k cases on 2 cores, it is faster than any HNSW setting that reaches the recall bar: Chroma's fixed cost "
    "per call is already about that of the whole exact search. Chroma remains the store of record and the server "
    'that replicas share, and `search = "hnsw"` remains for libraries far beyond 100k, where exact search grows '
    "linearly and HNSW does not.",
    "- For that HNSW path: `max_neighbors = 32`, `ef_construction = 200` (as now), `ef_search = 1024` (the "
    "setting that reaches recall 0.99 at 100k here), and `exact_rerank = false` (it buys nothing, see above).",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--m", type=int, nargs="+", default=[16, 32], help="max_neighbors values")
    parser.add_argument("--ef", type=int, nargs="+", default=[128, 256, 512, 1024], help="ef_search values")
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--filtered-m", type=int, default=32, help="max_neighbors of the filtered HNSW row")
    parser.add_argument("--filtered-queries", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    command = "python bench/retrieval.py " + " ".join(sys.argv[1:])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mmderm-retrieval-bench-") as tmp:
        sizes = [bench_size(n, args, Path(tmp)) for n in args.sizes]
    result = {"machine": machine(), "dim": args.dim, "queries": args.queries, "ef_construction": args.ef_construction,
              "seconds": round(time.perf_counter() - started, 1), "sizes": sizes}  # fmt: skip
    write(result, command.strip())
    print("\n".join(verdict(result)))
    print(f"wrote {RESULTS / 'retrieval.md'} in {result['seconds']} s")


if __name__ == "__main__":
    main()
