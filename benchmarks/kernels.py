"""Preprocessing kernels (twinhpc.kernels) against their references: ``python benchmarks/kernels.py``.

Each row times a kernel and its reference on the same input, from the generators the tests use
(``synthetic_batch``, ``synthetic_table``, ``synthetic_corpus``). The two alternate within each
round (kernel, reference, next row, ...), ``--rounds`` rounds after one warm-up call of each
(which also compiles or loads the Numba code); a row's time is the median over the rounds, and
its ratio is the reference's median over the kernel's. Fast kernels are timed over ``repeat``
calls per round. Rows:

- ``normalize_augment``: a CIFAR-10 batch (256×32×32×3 uint8), pad 4, random crops and flips
  → float32 NCHW, Numba fused kernel (one thread, the default) vs the vectorised numpy reference.
  Target: ratio >= 5. The output is checked to be bit-identical.
- ``normalize_augment_parallel``: the same on Numba's thread pool (no target).
- ``image_moments`` / ``tabular_moments``: one pass of statistics (50,000 CIFAR images;
  100,000 × 32 floats with 10 % NaN) vs ``np.mean``/``np.var`` (``np.nan*``). No target.
- ``count_terms`` / ``encode``: the IMDB-sized corpus, Numba tokeniser and hash table vs ``re``
  and Python dicts. No target.
- ``tfidf_fit_transform``: the IMDB-sized corpus (``--docs`` documents of about ``--words``
  words, Zipf over ``--terms`` terms) with a fixed vocabulary (every term of the corpus, ordered
  by count): tokenising, document frequencies, idf and the l2-normalised CSR rows, vs
  ``TfidfVectorizer(vocabulary=vocab.index).fit_transform(docs)`` of scikit-learn (the same work;
  scipy matrix out). Target: ratio >= 2 with equal output (same ``indptr`` and ``indices``,
  ``data`` allclose at rtol 1e-12), checked on the last round. Without scikit-learn the reference
  is :func:`tfidf_reference` and there is no target.

Prints a table (``--json``: JSON rows instead) and, with ``--results FOLDER``, writes a new
record ``FOLDER/kernels/<UTC time>-<commit>.h5`` (table ``kernels``, one row per kernel; the row
names are the attribute ``names``; docs/benchmark-records.md). Exit status 1 if a target fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twinhpc.bench import format_table, median  # noqa: E402
from twinhpc.bench.targets import KERNELS_AUGMENT, KERNELS_TFIDF  # noqa: E402
from twinhpc.io.bench_results import write_results  # noqa: E402
from twinhpc.kernels import image, stats, text, tfidf  # noqa: E402


def timed(fn, repeat: int) -> tuple[float, object]:
    t0 = time.perf_counter()
    for _ in range(repeat):
        result = fn()
    return (time.perf_counter() - t0) / repeat, result


def cases(args):
    """(name, kernel, reference, repeat, target, check(kernel_result, reference_result) -> bool)."""
    x = image.synthetic_batch(args.batch, 32, 32, 3, seed=0)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    offsets, flips = image.augment_params(image.batch_rng(0, 0, 0, 0), len(x), pad=4)
    aug = dict(offsets=offsets, flips=flips, pad=4, layout="NCHW")
    same = np.array_equal
    yield (
        "normalize_augment",
        lambda: image.normalize_augment(x, mean, std, **aug),
        lambda: image.normalize_augment_reference(x, mean, std, **aug),
        20,
        KERNELS_AUGMENT,
        same,
    )
    yield (
        "normalize_augment_parallel",
        lambda: image.normalize_augment(x, mean, std, parallel=True, **aug),
        lambda: image.normalize_augment_reference(x, mean, std, **aug),
        20,
        None,
        same,
    )

    def close(a, b):
        return same(a.count, b.count) and np.allclose(a.mean, b.mean, rtol=1e-12) and np.allclose(a.m2, b.m2, rtol=1e-9)

    images = image.synthetic_batch(args.images, 32, 32, 3, seed=1)
    yield (
        "image_moments",
        lambda: stats.image_moments(images),
        lambda: stats.image_moments_reference(images),
        1,
        None,
        close,
    )
    table = stats.synthetic_table(args.rows, 32, seed=2)
    yield (
        "tabular_moments",
        lambda: stats.tabular_moments(table),
        lambda: stats.tabular_moments_reference(table),
        1,
        None,
        close,
    )

    docs = text.synthetic_corpus(args.docs, args.words, args.terms, seed=3)
    counts = text.count_terms(docs)
    yield (
        "count_terms",
        lambda: text.count_terms(docs),
        lambda: text.count_terms_reference(docs),
        1,
        None,
        lambda a, b: a.terms == b.terms and same(a.tf, b.tf) and same(a.df, b.df),
    )
    vocab = text.build_vocabulary(counts)
    small = text.build_vocabulary(counts, min_freq=2, max_size=20_000)
    yield (
        "encode",
        lambda: text.encode(docs, small, 256, stop_words=text.ENGLISH_STOP_WORDS),
        lambda: text.encode_reference(docs, small, 256, stop_words=text.ENGLISH_STOP_WORDS),
        1,
        None,
        same,
    )

    def equal_csr(ours, theirs):
        x, m = ours[0], theirs
        if isinstance(m, tuple):
            m = m[0]
        return same(x.indptr, m.indptr) and same(x.indices, m.indices) and np.allclose(x.data, m.data, rtol=1e-12)

    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
    except ImportError:
        yield (
            "tfidf_fit_transform",
            lambda: tfidf.tfidf_fit_transform(docs, vocab),
            lambda: tfidf.tfidf_reference(docs, vocab),
            1,
            None,
            equal_csr,
        )
    else:
        yield (
            "tfidf_fit_transform",
            lambda: tfidf.tfidf_fit_transform(docs, vocab),
            lambda: TfidfVectorizer(vocabulary=vocab.index).fit_transform(docs),
            1,
            KERNELS_TFIDF,
            equal_csr,
        )


def run(args) -> list[dict]:
    rows = []
    prepared = list(cases(args))
    for _, kernel, reference, *_ in prepared:  # warm-up: compile or load the Numba code
        kernel()
        reference()
    times = {name: ([], []) for name, *_ in prepared}
    checks = {}
    for _ in range(args.rounds):
        for name, kernel, reference, repeat, _, check in prepared:
            tk, a = timed(kernel, repeat)
            tr, b = timed(reference, repeat)
            times[name][0].append(tk)
            times[name][1].append(tr)
            checks[name] = bool(check(a, b))
    for name, _, _, _, target, _ in prepared:
        tk, tr = median(times[name][0]), median(times[name][1])
        ratio = tr / tk
        rows.append(
            {
                "kernel": name,
                "kernel_ms": tk * 1e3,
                "reference_ms": tr * 1e3,
                "ratio": ratio,
                "equal": checks[name],
                "target": target,
                "result": "n/a" if target is None else ("PASS" if ratio >= target and checks[name] else "FAIL"),
            }
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per row (median reported; default 5)")
    p.add_argument("--batch", type=int, default=256, help="images per augmentation batch (default 256)")
    p.add_argument("--images", type=int, default=50_000, help="images for image_moments (default 50,000)")
    p.add_argument("--rows", type=int, default=100_000, help="rows for tabular_moments (default 100,000)")
    p.add_argument("--docs", type=int, default=25_000, help="documents of the text corpus (default 25,000)")
    p.add_argument("--words", type=int, default=230, help="mean words per document (default 230)")
    p.add_argument("--terms", type=int, default=50_000, help="distinct words of the Zipf source (default 50,000)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    p.add_argument("--results", metavar="FOLDER", help="also write a new record FOLDER/kernels/<time>-<commit>.h5")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds: must be >= 1")
    rows = run(args)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(
            format_table(
                [
                    {
                        **r,
                        "target": "n/a" if r["target"] is None else f">= {r['target']:g}x",
                        "equal": "yes" if r["equal"] else "NO",
                    }
                    for r in rows
                ],
                {
                    "kernel": "",
                    "kernel_ms": ".2f",
                    "reference_ms": ".2f",
                    "ratio": ".1f",
                    "equal": "",
                    "target": "",
                    "result": "",
                },
            )
        )
    if args.results:
        numeric = [
            {
                "kernel_ms": r["kernel_ms"],
                "reference_ms": r["reference_ms"],
                "ratio": r["ratio"],
                "equal": int(r["equal"]),
                "target": float("nan") if r["target"] is None else r["target"],
            }
            for r in rows
        ]
        path = write_results(
            os.path.join(args.results, "kernels.h5"),
            {"kernels": numeric},
            {"names": [r["kernel"] for r in rows], "options": json.dumps(vars(args))},
        )
        print(f"wrote {path}", file=sys.stderr)
    return 1 if any(r["result"] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
