"""Pool the runs of several ablation reports: every run of a variant against every run of the reference.

    python -m model_export.ablation_pool REPORT.json [REPORT.json ...] --out docs/results/ablation_pool

One 3000-step run per variant resolves about half a dB (docs/ablations.md, fifth study). Reports of one budget
(the same base config but for its name and seed, measured on the same datasets; other seeds, other CPUs) give a
variant several runs. Each run of each variant is compared with each run of the reference (BD-PSNR and BD-rate
on val and Kodak, and the PSNR at the reference run's rate of each level, where BD numbers hide which rates a
variant wins or loses), and the reference's runs with each other give the yardstick: how far apart two runs of
one variant land, overall and per level. A run that appears in two reports (a reference borrowed with
``--reference-report``, or one reproduced bit for bit on another machine) counts once: runs are keyed by their
measured curves. Writes ``pooled.json`` and ``pooled.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .ablation import REFERENCE
from .bd_rate import bd_psnr, bd_rate, psnr_at_bpp
from .config import ExperimentConfig

__all__ = ["budget_of", "collect_runs", "main", "pool", "render_markdown"]

DATASETS = ("val", "kodak")


def budget_of(report: dict) -> dict:
    """The report's base config, defaults filled in, without what may differ between samples (name, seed)."""
    config = ExperimentConfig.from_dict(copy.deepcopy(report["base_config"])).to_dict()
    config.pop("name", None)
    config["train"].pop("seed", None)
    return config


def collect_runs(reports: dict[str, dict]) -> dict[str, list[dict]]:
    """Every distinct run per variant, in report order: ``{"report", "seed", "rd"}``.

    Raises ``ValueError`` when the reports are not of one budget or not measured on the same datasets.
    """
    first_path, first = next(iter(reports.items()))
    runs: dict[str, list[dict]] = {}
    seen: set[str] = set()
    for path, report in reports.items():
        if budget_of(report) != budget_of(first):
            raise ValueError(f"{path} was trained on another budget than {first_path} (base configs differ)")
        if report["datasets"] != first["datasets"]:
            raise ValueError(f"{path} was measured on other datasets than {first_path}")
        if report["reference"] != REFERENCE:
            raise ValueError(f"{path}: its reference is {report['reference']!r}, not {REFERENCE!r}")
        for variant, result in report["variants"].items():
            key = json.dumps({name: result["rd"][name] for name in DATASETS}, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            runs.setdefault(variant, []).append(
                {"report": path, "seed": report["base_config"]["train"]["seed"], "rd": result["rd"]})
    if REFERENCE not in runs:
        raise ValueError(f"no report has a run of the reference {REFERENCE!r}")
    return runs


def _pair(test: dict, anchor: dict) -> dict:
    """BD-PSNR (dB), BD-rate (%) and the PSNR difference at each of ``anchor``'s levels (``equal_rate_db``: the
    test curve interpolated in log-bpp at the anchor's rate) per dataset; ``None`` where undefined."""
    entry = {}
    for name in DATASETS:
        curves = (anchor["rd"][name]["bpp"], anchor["rd"][name]["psnr"],
                  test["rd"][name]["bpp"], test["rd"][name]["psnr"])
        values = {}
        for key, function in (("bd_psnr_db", bd_psnr), ("bd_rate_percent", bd_rate)):
            try:
                values[key] = round(function(*curves), 4)
            except ValueError:
                values[key] = None
        values["equal_rate_db"] = [
            None if (psnr := psnr_at_bpp(curves[2], curves[3], rate)) is None else round(psnr - anchor_psnr, 4)
            for rate, anchor_psnr in zip(curves[0], curves[1])]
        entry[name] = values
    return entry


def _stats(values: list[float]) -> dict:
    return {
        "n": len(values),
        "mean": round(float(np.mean(values)), 4) if values else None,
        "min": round(min(values), 4) if values else None,
        "max": round(max(values), 4) if values else None,
    }


def _summary(pairs: list[dict], absolute: bool = False) -> dict:
    """Mean, min, max and the count behind (negative BD-PSNR) of the pairs, per dataset and metric, and the same
    of the PSNR at equal rate per level of the reference (``equal_rate_db``, one entry per level).

    ``absolute`` summarises the sizes of the differences (for pairs of one variant, whose order is arbitrary).
    """
    summary = {}
    for name in DATASETS:
        summary[name] = {}
        for key in ("bd_psnr_db", "bd_rate_percent"):
            values = [p["bd"][name][key] for p in pairs if p["bd"][name][key] is not None]
            values = [abs(value) for value in values] if absolute else values
            summary[name][key] = _stats(values)
        levels = len(pairs[0]["bd"][name]["equal_rate_db"]) if pairs else 0  # one budget: one level count
        summary[name]["equal_rate_db"] = []
        for level in range(levels):
            values = [p["bd"][name]["equal_rate_db"][level] for p in pairs
                      if p["bd"][name]["equal_rate_db"][level] is not None]
            stats = _stats([abs(value) for value in values] if absolute else values)
            stats["pairs_behind"] = None if absolute else sum(value < 0 for value in values)
            summary[name]["equal_rate_db"].append(stats)
        psnrs = [p["bd"][name]["bd_psnr_db"] for p in pairs if p["bd"][name]["bd_psnr_db"] is not None]
        summary[name]["pairs_behind"] = None if absolute else sum(value < 0 for value in psnrs)
    return summary


def pool(reports: dict[str, dict]) -> dict:
    """Runs per variant, every variant run against every reference run, and reference against reference."""
    runs = collect_runs(reports)
    references = runs[REFERENCE]
    label = {id(run): f"{run['report']}#{variant}" for variant, group in runs.items() for run in group}
    reference_pairs = [
        {"test": label[id(b)], "anchor": label[id(a)], "bd": _pair(b, a)}
        for a, b in itertools.combinations(references, 2)
    ]
    variants = {}
    for variant, group in runs.items():
        if variant == REFERENCE:
            continue
        pairs = [{"test": label[id(run)], "anchor": label[id(ref)],
                  "same_sample": _is_reference_of(reports[run["report"]], ref), "bd": _pair(run, ref)}
                 for run in group for ref in references]
        variants[variant] = {"runs": len(group), "pairs": pairs, "summary": _summary(pairs),
                             "summary_same_sample": _summary([p for p in pairs if p["same_sample"]])}
    return {
        "reports": list(reports),
        "budget": budget_of(next(iter(reports.values()))),
        "runs": {variant: [{"report": run["report"], "seed": run["seed"]} for run in group]
                 for variant, group in runs.items()},
        "reference_pairs": {"pairs": reference_pairs, "summary": _summary(reference_pairs, absolute=True)},
        "variants": variants,
    }


def _is_reference_of(report: dict, reference_run: dict) -> bool:
    """Whether ``reference_run`` is ``report``'s own reference (trained in it, borrowed or reproduced)."""
    entry = report["variants"][report["reference"]]
    return all(entry["rd"][name] == reference_run["rd"][name] for name in DATASETS)


def _range(stats: dict, digits: int, unit: str, sign: str = "+") -> str:
    if stats["mean"] is None:
        return "n/a"
    return (f"{stats['mean']:{sign}.{digits}f}{unit} "
            f"({stats['min']:{sign}.{digits}f} to {stats['max']:{sign}.{digits}f})")


def _behind(summary: dict, name: str) -> str:
    if summary[name]["pairs_behind"] is None:
        return "–"
    return f"{summary[name]['pairs_behind']} of {summary[name]['bd_psnr_db']['n']}"


def _level_cell(stats: dict, sign: str) -> str:
    cell = _range(stats, 2, "", sign)
    if stats["pairs_behind"] is None or stats["mean"] is None:
        return cell
    return f"{cell}, {stats['pairs_behind']} of {stats['n']} behind"


def _bd_rows(rows: list[tuple[str, int, dict, str]]) -> list[str]:
    """One line per row ``(label, runs, {"pairs", "summary"}, sign)``: BD-PSNR and BD-rate on both sets."""
    lines = [("| variant | runs | pairs | val BD-PSNR | pairs behind, val | Kodak BD-PSNR | pairs behind, Kodak "
             "| val BD-rate | Kodak BD-rate |"),
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, runs, entry, sign in rows:
        summary = entry["summary"]
        cells = [name, str(runs), str(len(entry["pairs"])),
                 _range(summary["val"]["bd_psnr_db"], 2, " dB", sign), _behind(summary, "val"),
                 _range(summary["kodak"]["bd_psnr_db"], 2, " dB", sign), _behind(summary, "kodak"),
                 _range(summary["val"]["bd_rate_percent"], 1, " %", sign),
                 _range(summary["kodak"]["bd_rate_percent"], 1, " %", sign)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _level_rows(rows: list[tuple[str, int, dict, str]], name: str) -> list[str]:
    """One line per row: the PSNR at the reference run's rate of each level on dataset ``name``."""
    levels = max(len(entry["summary"][name]["equal_rate_db"]) for _, _, entry, _ in rows)
    lines = ["| variant | " + " | ".join(f"level {level + 1}" for level in range(levels)) + " |",
             "| --- |" + " --- |" * levels]
    for label, _, entry, sign in rows:
        per_level = entry["summary"][name]["equal_rate_db"]
        cells = [_level_cell(per_level[level], sign) if level < len(per_level) else "n/a" for level in range(levels)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(pooled: dict) -> str:
    """One row per variant: runs, pairs, BD-PSNR mean (range) on val and Kodak, pairs behind, BD-rate mean; then
    the PSNR at equal rate per level, one table per dataset; then the same for the same-sample pairs only."""
    steps = pooled["budget"]["train"]["steps"]
    lines = [
        f"# Ablation runs pooled ({steps} steps per run)",
        "",
        "Every run of a variant against every run of the reference `simclr_encoder`: mean over the pairs "
        "(min to max); negative BD-PSNR = behind the reference. The first row is the reference's runs against "
        "each other, as sizes (|BD|): how far apart two runs of one variant land. Reports: "
        + ", ".join(f"`{path}`" for path in pooled["reports"]) + ".",
        "",
    ]
    rows = [(f"`{REFERENCE}` vs itself", len(pooled["runs"][REFERENCE]), pooled["reference_pairs"], "")]
    rows += [(f"`{variant}`", entry["runs"], entry, "+") for variant, entry in pooled["variants"].items()]
    lines += _bd_rows(rows)
    for name, title in (("val", "val"), ("kodak", "Kodak")):
        caption = (f"PSNR at the reference run's rate of each level, {title} (dB; the variant's curve interpolated "
                   "in log-bpp, n/a where that rate is outside it): mean (min to max), pairs behind; for the reference "
                   "the sizes of the differences.")
        lines += ["", caption, ""] + _level_rows(rows, name)
    same_sample = []
    for variant, entry in pooled["variants"].items():
        pairs = [pair for pair in entry["pairs"] if pair["same_sample"]]
        if pairs:
            runs = len({pair["test"] for pair in pairs})
            same_sample.append((f"`{variant}`", runs, {"pairs": pairs, "summary": entry["summary_same_sample"]}, "+"))
    if same_sample:
        lines += ["", ("Same-sample pairs only: each run against the reference of its own report (the same seed, so "
                  "the same crops in the same order; trained in that report or borrowed from a report of that seed)."), ""]
        lines += _bd_rows(same_sample)
        lines += ["", "Same-sample pairs, PSNR at the reference run's rate of each level, val (dB).", ""]
        lines += _level_rows(same_sample, "val")
    lines += ["", "Runs:", ""]
    for variant, group in pooled["runs"].items():
        lines.append(f"- `{variant}`: " + ", ".join(f"`{run['report']}` (seed {run['seed']})" for run in group))
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Pool the runs of several ablation reports of one budget.")
    parser.add_argument("reports", nargs="+", help="ablations.json files written by model_export.ablation")
    parser.add_argument("--out", default="docs/results/ablation_pool")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    reports = {}
    for path in args.reports:
        try:
            reports[path] = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise SystemExit(f"{path}: not a readable ablations report ({error})")
    try:
        pooled = pool(reports)
    except (ValueError, KeyError) as error:
        raise SystemExit(f"cannot pool these reports: {error}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pooled.json").write_text(json.dumps(pooled, indent=1))
    (out / "pooled.md").write_text(render_markdown(pooled))
    print(f"wrote {out / 'pooled.json'}, {out / 'pooled.md'}")
    return pooled


if __name__ == "__main__":
    main()
