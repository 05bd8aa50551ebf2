"""The `--plot` of a sweep: every variant on the params-vs-MACs plane, drawn with matplotlib.

Both axes are logarithmic. Valid variants are dots coloured by a chosen quantity (a metric or
param: a colour bar for numbers, a legend for other values); invalid variants have no counts to
place them by (a variant with an error is not a network), so the legend counts them. The
Pareto front joins the valid variants that give the most parameters (capacity) for their MACs
(compute): no other valid variant has at least as many parameters for no more MACs. (With both
read as costs the front would be the smallest variant alone.)
"""

from __future__ import annotations

import io
from collections.abc import Sequence


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (params, macs) points that no other point dominates, where more params and fewer
    MACs are better; in order of MACs (and so of params)."""
    front: list[tuple[float, float]] = []
    best = float("-inf")
    for x, y in sorted(set(points), key=lambda p: (p[1], -p[0])):
        if x > best:
            front.append((x, y))
            best = x
    return front


def plot(records: Sequence, colour: str | None, title: str = "", fmt: str = "png") -> bytes:
    """The figure as PNG or SVG bytes, with resgen's mark (resgen.sweep.files)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never a window
    import matplotlib.pyplot as plt
    from matplotlib import colors

    from resgen.output import mark_png
    from resgen.sweep.files import mark_svg
    from resgen.sweep.query import values_of

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    valid = [r for r in records if r.valid and (r.param_count or 0) > 0 and (r.macs or 0) > 0]
    invalid = sum(1 for r in records if not r.valid)
    if valid:
        xs = [r.param_count for r in valid]
        ys = [r.macs for r in valid]
        values = values_of(valid, colour) if colour else [None] * len(valid)
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if colour and len(numbers) == len(values) and len(set(numbers)) > 1:
            low, high = min(numbers), max(numbers)
            norm = (
                colors.LogNorm(low, high)
                if low > 0 and high / low > 100
                else colors.Normalize(low, high)
            )
            dots = ax.scatter(
                xs,
                ys,
                c=numbers,
                cmap="viridis",
                norm=norm,
                s=18,
                alpha=0.85,
                linewidths=0,
                label="valid",
                zorder=3,
            )
            fig.colorbar(dots, ax=ax, label=colour)
        elif colour and values and any(v is not None for v in values):
            kinds = sorted({_label(v) for v in values})
            palette = plt.get_cmap("tab10")
            for i, kind in enumerate(kinds[:10]):
                chosen = [j for j, v in enumerate(values) if _label(v) == kind]
                ax.scatter(
                    [xs[j] for j in chosen],
                    [ys[j] for j in chosen],
                    s=18,
                    color=palette(i),
                    alpha=0.85,
                    linewidths=0,
                    zorder=3,
                    label=f"valid, {colour} = {kind}",
                )
            rest = [j for j, v in enumerate(values) if _label(v) not in kinds[:10]]
            if rest:
                ax.scatter(
                    [xs[j] for j in rest],
                    [ys[j] for j in rest],
                    s=18,
                    color="grey",
                    zorder=3,
                    label=f"valid, other {colour}",
                )
        else:
            ax.scatter(
                xs, ys, s=18, color="#3b6ea5", alpha=0.85, linewidths=0, zorder=3, label="valid"
            )
        front = pareto_front(list(zip(xs, ys, strict=True)))
        ax.plot(
            [p[0] for p in front],
            [p[1] for p in front],
            color="black",
            linewidth=1.2,
            marker="o",
            markersize=4,
            markerfacecolor="none",
            zorder=4,
            label=f"Pareto front: most params for the MACs ({len(front)})",
        )
    if invalid:
        ax.scatter([], [], marker="x", color="#c0392b", label=f"invalid: {invalid} (no counts)")
    if valid:
        ax.set_xscale("log")
        ax.set_yscale("log")
    else:
        ax.text(
            0.5,
            0.5,
            "no variant has counts to plot",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_xlabel("parameters")
    ax.set_ylabel("MACs (conv + linear multiply-accumulates)")
    ax.set_title(title)
    ax.grid(True, which="major", linewidth=0.5, alpha=0.5)
    ax.grid(True, which="minor", linewidth=0.3, alpha=0.25)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    out = io.BytesIO()
    if fmt == "svg":
        fig.savefig(out, format="svg", metadata={"Date": None})
        plt.close(fig)
        return mark_svg(out.getvalue().decode("utf-8")).encode("utf-8")
    fig.savefig(out, format="png")
    plt.close(fig)
    return mark_png(out.getvalue())


def _label(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return f"({value[0]}, {value[1]})"
    return "?" if value is None else str(value)
