"""The grid's plots: PR and P@N curves per code length, bit balance of the longest code."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from contrahash.bench.grid import CellOutcome
from contrahash.bench.report import precision_at_n_of
from contrahash.evaluation.metrics import pr_curve_points
from contrahash.io import atomic_write

__all__ = ["write_plots"]


def _first_seed_reports(outcomes: Sequence[CellOutcome]) -> dict[str, dict[str, Any]]:
    """label → the bits reports of the row's lowest finished seed."""
    chosen: dict[str, CellOutcome] = {}
    for o in outcomes:
        if not o.results.get("bits"):
            continue
        if o.cell.label not in chosen or o.cell.seed < chosen[o.cell.label].cell.seed:
            chosen[o.cell.label] = o
    return {lab: o.results["bits"] for lab, o in chosen.items()}


def _pr_points(report: Mapping[str, Any]) -> tuple[list[float], list[float]] | None:
    """(recall, precision) of the radii where something relevant was retrieved (no drop to
    (0, 0) at the radii whose Hamming balls are empty: :func:`~contrahash.evaluation.metrics.pr_curve_points`)."""
    curve = report.get("pr_curve")
    if isinstance(curve, Mapping) and curve.get("precision") and curve.get("recall"):
        points = pr_curve_points(curve)
        return points if points[0] else None
    return None


def _pn_points(report: Mapping[str, Any]) -> tuple[list[float], list[float]] | None:
    """(N values, precision) from a P@N curve, or from the P@N cut-offs."""
    for key in ("precision_curve", "pn_curve", "precision_at_n_curve"):
        curve = report.get(key)
        if isinstance(curve, Mapping):
            ns = curve.get("n") or curve.get("N") or curve.get("top") or curve.get("ns")
            ps = curve.get("precision")
            if ns and ps:
                return [float(x) for x in ns], [float(x) for x in ps]
    pn = precision_at_n_of(report)
    if isinstance(pn, Mapping) and pn:
        items = sorted((float(k), float(v)) for k, v in pn.items() if v is not None)
        return [k for k, _ in items], [v for _, v in items]
    return None


def _ones_fraction(report: Mapping[str, Any]) -> list[float] | None:
    stats = report.get("bit_balance")
    if isinstance(stats, Mapping):
        for key in ("ones_fraction", "fraction_ones", "bit_means_01", "p_one", "ones"):
            if isinstance(stats.get(key), list | tuple):
                return [float(x) for x in stats[key]]
        means = stats.get("bit_means") or stats.get("mean")
        if isinstance(means, list | tuple):  # ±1 means → fraction of +1
            return [(float(x) + 1) / 2 for x in means]
    if isinstance(stats, list | tuple):
        return [float(x) for x in stats]
    return None


def _save_figure(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    data = buf.getvalue()
    return atomic_write(path, lambda f: f.write(data))


#: where a legend goes: outside the axes, right of them, so it hides no curve however many
#: rows a grid has (the saved image grows to hold it: ``bbox_inches="tight"``)
_LEGEND = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0.0,
           "fontsize": 8, "frameon": False}
_CURVES = {
    "pr": (_pr_points, "recall", "precision", "PR curve"),
    "pn": (_pn_points, "number of retrieved items N", "precision@N", "P@N"),
}


def _curve_figure(kind: str, bits: int, reports: Mapping[str, Mapping[str, Any]]) -> Any:
    """The ``kind`` ("pr" or "pn") figure of ``bits`` for every row, or None (nothing to
    draw); ``reports`` is label → bits → report."""
    import matplotlib.pyplot as plt

    getter, xlabel, ylabel, title = _CURVES[kind]
    fig, ax = plt.subplots(figsize=(5, 4))
    drawn = 0
    for label, reps in reports.items():
        rep = reps.get(str(bits))
        pts = getter(rep) if rep else None
        if pts:
            ax.plot(pts[0], pts[1], marker="." if len(pts[0]) < 40 else None, label=label)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    if kind == "pr":
        ax.set_xlim(0, 1.02)
    ax.set_title(f"{title} — {bits} bits")
    ax.grid(alpha=0.3)
    ax.legend(**_LEGEND)
    return fig


def _balance_figure(bits: int, balance: Mapping[str, Sequence[float]]) -> Any:
    """Fraction of +1 per bit for every row (markers, not bars: readable with ten rows)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, bits * 0.14), 4))
    for label, frac in balance.items():
        ax.plot(range(len(frac)), frac, marker="o", ms=3, lw=0.6, label=label)
    ax.axhline(0.5, color="black", lw=0.8, ls="--")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("bit")
    ax.set_ylabel("fraction of +1 over the database")
    ax.set_title(f"bit balance — {bits} bits")
    ax.legend(**_LEGEND)
    return fig


def write_plots(out_dir: Path, outcomes: Sequence[CellOutcome]) -> list[Path]:
    """pr_<bits>.png, pn_<bits>.png and bit_balance.png; returns the paths written.

    Legends sit outside the axes; the PR curves leave out the radii where nothing relevant
    was retrieved (see :func:`contrahash.evaluation.metrics.pr_curve_points`).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)

    reports = _first_seed_reports(outcomes)
    if not reports:
        return []
    bits = sorted({int(b) for reps in reports.values() for b in reps})
    written: list[Path] = []
    for b in bits:
        for kind in _CURVES:
            fig = _curve_figure(kind, b, reports)
            if fig is not None:
                written.append(_save_figure(fig, out_dir / f"{kind}_{b}.png"))
    longest = str(max(bits))
    balance = {lab: f for lab, reps in reports.items()
               if longest in reps and (f := _ones_fraction(reps[longest])) is not None}
    if balance:
        written.append(_save_figure(_balance_figure(int(longest), balance),
                                    out_dir / "bit_balance.png"))
    return written
