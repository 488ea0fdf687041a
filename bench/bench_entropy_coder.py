"""The entropy coder alone, per level, for one or more model folders measured in turns on the same latents.

    python -m bench.bench_entropy_coder MODEL_DIR [MODEL_DIR …] [--data ../shared/data/kodak] [--limit 8]
        [--repeats 3] [--out docs/results/bench_entropy_coder.json]

The first folder's encoder computes every image's latents once; every folder then codes them with its own tables:
``encode`` is its RDO rounding (at the λ it rounds with by default) and range coding to bytes, ``decode`` the range
decoding back to symbols (checked equal). Folders take turns per image and level, so drift of the machine falls on
all of them alike; per image the best of ``--repeats`` is kept, and the table gives the median over images and the
total bytes. For folders whose graphs are the same and whose tables differ (a new table format, a refit), this is
the time the tables cost; ``bench/bench_codecs.py`` measures whole requests.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from bench.bench_codecs import load_images
from service.codec import Codec, pad_image


def best_of(repeats: int, operation) -> tuple[float, object]:
    """Shortest wall time of ``repeats`` calls of ``operation`` and the last call's result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = operation()
        best = min(best, time.perf_counter() - start)
    return best, result


def measure(model_dirs: list[str], images: list, repeats: int) -> dict:
    """Per folder and level: encode and decode seconds per image (best of ``repeats``) and bytes per image."""
    codecs = [Codec.from_dir(d, threads=2) for d in model_dirs]
    reference = codecs[0].model
    results = {d: {} for d in model_dirs}
    for image in images:
        padded = pad_image(np.asarray(image), reference.padding_multiple)
        latents = reference.encode_latents(padded[None])
        for level in range(1, reference.levels + 1):
            for model_dir, codec in zip(model_dirs, codecs):
                coder, tables = codec.model.coders[level - 1], codec.model.tables[level - 1]
                residuals = latents[level - 1][0] - tables.medians[:, None, None]
                rdoq_lambda = codec.rdoq_per_level[level - 1]

                def encode():
                    symbols = coder.rdo_symbols(residuals, rdoq_lambda)
                    return symbols, coder.encode(symbols)

                encode_s, (symbols, payload) = best_of(repeats, encode)
                decode_s, decoded = best_of(repeats, lambda: coder.decode(payload, *symbols.shape[1:]))
                if not np.array_equal(decoded, symbols):
                    raise SystemExit(f"{model_dir} level {level}: decoding does not give the symbols back")
                row = results[model_dir].setdefault(str(level), {"encode_s": [], "decode_s": [], "bytes": []})
                row["encode_s"].append(encode_s)
                row["decode_s"].append(decode_s)
                row["bytes"].append(len(payload))
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dirs", nargs="+")
    parser.add_argument("--data", default="../shared/data/kodak")
    parser.add_argument("--limit", type=int, default=8, help="number of images (sorted by name)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="JSON file for the raw numbers")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.limit < 1:
        parser.error("--repeats and --limit must be at least 1")
    names, images = load_images(Path(args.data), args.limit)
    results = measure(args.model_dirs, images, args.repeats)
    print("| model | level | encode ms | decode ms | bytes |")
    print("| --- | --- | --- | --- | --- |")
    for model_dir, levels in results.items():
        for level, row in levels.items():
            print(f"| {model_dir} | {level} | {1e3 * statistics.median(row['encode_s']):.1f} | "
                  f"{1e3 * statistics.median(row['decode_s']):.1f} | {sum(row['bytes'])} |")
    report = {
        "images": names, "repeats": args.repeats, "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "results": results,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
