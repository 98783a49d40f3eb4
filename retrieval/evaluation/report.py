"""Render an evaluation's summary: the text the command prints, the markdown report and
the plots (``manage.py evaluate``; the JSON report is the summary itself).

The summary is built by :mod:`retrieval.evaluation.runner`; nothing here runs a search.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings

from retrieval import extraction
from retrieval.evaluation.runner import RANKINGS, Evaluation
from retrieval.vision.metrics import RECALL_GRID, interpolated_precision

METRIC_KEYS = ("mAP", "mP@1", "mP@5", "mP@10", "recall@1", "recall@5", "recall@10")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _seed_spread(pairs: Mapping[str, Any]) -> str:
    """" (mean of N RANSAC seeds, min-max)" when more than one seed was run."""
    if pairs.get("ransac_seeds", 1) < 2:
        return ""
    return f" (mean of {pairs['ransac_seeds']} RANSAC seeds, {_num(pairs['auc_min'], 3)}-{_num(pairs['auc_max'], 3)})"


def render_text(summary: Mapping[str, Any]) -> str:
    """The summary printed by the command."""
    lines = [f"dataset {summary['dataset']}   model {summary['model']}   {summary['wall_s']} s"]
    if "global" in summary:
        lines.append(
            f"{summary['catalog_images']} catalog images ({summary['indexed_images']} indexed, "
            f"{len(summary['failed_images'])} failed, {len(summary['duplicate_images'])} duplicates), "
            f"{summary['queries']} queries ({len(summary['failed_queries'])} failed)"
        )
        header = "".join(f"{key:>11}" for key in METRIC_KEYS)
        lines.append(f"{'(%)':<10}{header}")
        for name in (n for n in RANKINGS if n in summary):
            lines.append(f"{name:<10}" + "".join(f"{_pct(summary[name][key]):>11}" for key in METRIC_KEYS))
        if "recognition" in summary:
            r = summary["recognition"]
            lines.append(
                f"recognition: accuracy {_pct(r['accuracy'])} %, GAP {_pct(r['GAP'])} %, "
                f"{r['no_match']} of {summary['queries']} no match"
            )
        v = summary["verification"]
        lines.append(
            f"verified candidates: median inliers {_num(v['positive_median_inliers'])} (positives) vs "
            f"{_num(v['negative_median_inliers'])} (negatives), AUC {_num(v['auc'], 3)}"
        )
    if "pairs" in summary:
        p = summary["pairs"]
        lines.append(
            f"pairs: {p['true_pairs']} true, {p['false_pairs']} mismatched; AUC {_num(p['auc'], 3)}{_seed_spread(p)}; "
            "median "
            f"inliers {_num(p['true_median_inliers'])} vs {_num(p['false_median_inliers'])} (max "
            f"{p['false_max_inliers']}); geometry error on the marked points median "
            f"{_num(p['transfer_error_median_px'])} px"
        )
    if summary["timings_ms"]:
        stages = ", ".join(f"{stage} {ms:g}" for stage, ms in summary["timings_ms"].items())
        lines.append(f"median ms: {stages}")
    return "\n".join(lines)


def render_markdown(summary: Mapping[str, Any]) -> str:
    """A person-readable report with tables."""
    s = summary
    out = [f"# Evaluation: {s['dataset']}", ""]
    out += [f"- model: `{s['model']}`", f"- finished: {s['finished_at']}, wall time {s['wall_s']} s"]
    settings_text = ", ".join(f"{key}={value}" for key, value in s["settings"].items())
    out += [f"- settings: {settings_text}", ""]
    if "global" in s:
        out += _markdown_retrieval(s)
        if "recognition" in s:
            out += _markdown_recognition(s)
        out += _markdown_candidates(s)
        out += _markdown_queries(s)
    if "pairs" in s:
        out += _markdown_pairs(s["pairs"])
    if s["timings_ms"]:
        out += ["## Timings (median ms)", "", "| stage | ms |", "|---|---:|"]
        out += [f"| {stage} | {ms:g} |" for stage, ms in s["timings_ms"].items()]
        out.append("")
    return "\n".join(out)


def _markdown_retrieval(s: Mapping[str, Any]) -> list[str]:
    """The retrieval table: one row per ranking."""
    out = [
        "## Retrieval",
        "",
        f"{s['catalog_images']} catalog images ({s['indexed_images']} indexed, {len(s['failed_images'])} "
        f"failed, {len(s['duplicate_images'])} duplicates); {s['queries']} queries, {s['scored_queries']} "
        f"with positives, {len(s['failed_queries'])} failed. Values in %. \"global\" ranks the catalog by "
        "the plain cosine similarity of the global descriptors; \"shortlist\" is the order of the pgvector "
        "shortlist (with query expansion and database-side augmentation when enabled); \"verified\" is the "
        "final order after geometric verification.",
        "",
        "| ranking | " + " | ".join(METRIC_KEYS) + " |",
        "|---|" + "---:|" * len(METRIC_KEYS),
    ]
    for name in (n for n in RANKINGS if n in s):
        out.append(f"| {name} | " + " | ".join(_pct(s[name][key]) for key in METRIC_KEYS) + " |")
    out.append("")
    return out


def _markdown_recognition(s: Mapping[str, Any]) -> list[str]:
    r = s["recognition"]
    return [
        "## Recognition",
        "",
        "| accuracy (%) | GAP (%) | no match |",
        "|---:|---:|---:|",
        f"| {_pct(r['accuracy'])} | {_pct(r['GAP'])} | {r['no_match']} of {s['queries']} |",
        "",
    ]


def _markdown_candidates(s: Mapping[str, Any]) -> list[str]:
    """Inliers of the verified candidates, positives against negatives."""
    v = s["verification"]
    return [
        "## Verified candidates",
        "",
        f"Inliers of the first {s['settings']['verify_top']} candidates by similarity "
        f"(min_inliers = {s['settings']['min_inliers']}):",
        "",
        "| | candidates | median inliers |",
        "|---|---:|---:|",
        f"| positives | {v['positive_candidates']} | {_num(v['positive_median_inliers'])} |",
        f"| negatives | {v['negative_candidates']} | {_num(v['negative_median_inliers'])} |",
        "",
        f"AUC (positives vs negatives by inliers): {_num(v['auc'], 3)}",
        "",
    ]


def _markdown_queries(s: Mapping[str, Any]) -> list[str]:
    """One row per query, then the catalog images that failed."""
    out = [
        "## Queries",
        "",
        "| query | landmark | AP global | AP verified | top result | its inliers | verified results "
        "| recognised | confidence |",
        "|---|---|---:|---:|---|---:|---:|---|---:|",
    ]
    for q in s["per_query"]:
        out.append(
            f"| {q['id']} | {q['landmark'] or ''} | {_pct(q.get('ap_global'))} | {_pct(q.get('ap_verified'))} "
            f"| {q['top_verified'] or ''} | {q['top_inliers'] if q['top_inliers'] is not None else ''} "
            f"| {q['verified_results']} "
            f"| {q['recognised'] or ('error: ' + q['error'] if q['error'] else 'no match')} "
            f"| {_num(q['confidence'], 2) if q['confidence'] is not None else ''} |"
        )
    out.append("")
    if s["failed_images"]:
        out += ["Failed catalog images:", ""] + [f"- {f['id']}: {f['reason']}" for f in s["failed_images"]]
        out.append("")
    return out


def _markdown_pairs(p: Mapping[str, Any]) -> list[str]:
    """The pair table (AUC, inliers, geometry error), then one row per pair."""
    within = next(key for key in p if key.startswith("transfer_within_"))
    out = [
        "## Pairs",
        "",
        f"{p['true_pairs']} true pairs; {p['false_pairs']} mismatched pairs (image1 of each pair against "
        f"image2 of every other pair; {p['same_place_skipped']} combinations of pairs that share an image "
        "file or a place were skipped as the same place"
        + (
            f"; given as the same place: {'; '.join(', '.join(g) for g in p['same_place_given'])}"
            if p.get("same_place_given")
            else ""
        )
        + ").",
        "",
        "| AUC | median inliers, true | median inliers, mismatched | max inliers, mismatched "
        f"| median geometry error (px) | {within.replace('_', ' ')} (%) |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {_num(p['auc'], 3)}{_seed_spread(p)} | {_num(p['true_median_inliers'])} "
        f"| {_num(p['false_median_inliers'])} | {p['false_max_inliers']} | {_num(p['transfer_error_median_px'])} "
        f"| {_pct(p[within])} |",
        "",
        "The AUC is the mean over RANSAC seeds 0..N-1 (`--ransac-seeds N`); the inlier columns and the "
        "rows below are seed 0's, the server's.",
        "",
        "| pair | inliers | tentative | geometry error (px) | max mismatched inliers |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in p["per_pair"]:
        out.append(
            f"| {row['id']} | {row['inliers']} | {row['tentative']} | {_num(row['transfer_error_px'])} "
            f"| {row['max_false_inliers']} |"
        )
    out.append("")
    return out


def write_plots(evaluation: Evaluation, folder: Path) -> list[Path]:
    """Precision-recall curves (global vs verified) and inlier histograms as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    name = evaluation.summary["dataset"]
    if any(evaluation.pr_curves.values()):
        fig, ax = plt.subplots(figsize=(6, 5))
        styles = (("tab:blue", "-"), ("tab:green", "-"), ("tab:orange", "--"))  # verified dashed: often on top
        for ranking, (color, style) in zip(RANKINGS, styles, strict=True):
            curves = evaluation.pr_curves.get(ranking, [])
            for recall, precision in curves:
                ax.plot(recall, precision, color=color, alpha=0.15, linewidth=0.8)
            if curves:
                mean = np.mean([interpolated_precision(r, p) for r, p in curves], axis=0)
                m_ap = evaluation.summary[ranking]["mAP"]
                label = f"{ranking} (mAP {_pct(m_ap)} %)"
                ax.plot(RECALL_GRID, mean, color=color, linestyle=style, linewidth=2.5, label=label)
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        ax.set_title(f"{name}: precision-recall (thin: per query, thick: mean interpolated)", fontsize=9)
        ax.legend(loc="lower left")
        ax.grid(alpha=0.3)
        written.append(_save(fig, folder / "precision_recall.png"))
    for prefix, filename in (("retrieval", "candidate_inliers.png"), ("pairs", "pair_inliers.png")):
        groups = {key: v for key, v in evaluation.inliers.items() if key.startswith(prefix + ":")}
        if not any(groups.values()):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        top = max(max(v, default=0) for v in groups.values())
        bins = np.arange(0, top + 2) if top <= 60 else np.linspace(0, top + 1, 61)
        for (key, values), color in zip(groups.items(), ("tab:green", "tab:red"), strict=False):
            ax.hist(values, bins=bins, alpha=0.6, color=color, label=f"{key.split(': ')[1]} (n={len(values)})")
        ax.axvline(extraction.min_inliers(settings.LANDMARKS_EXTRACTOR), color="black", linestyle="--", linewidth=1, label="min_inliers")
        ax.set_yscale("log")
        ax.set(xlabel="inliers", ylabel="count")
        ax.set_title(f"{name}: inliers, {prefix}", fontsize=9)
        ax.legend()
        written.append(_save(fig, folder / filename))
    return written


def _save(fig: Any, path: Path) -> Path:
    from matplotlib import pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
