"""A small SVG line chart of the cache simulation, written by hand (no plotting dependency).

x: the threshold; y: hit rate, precision and false-hit rate in percent. One
line style per rule (plain cosine dashed, guarded solid), one colour per figure,
and a marker with a label at each rule's chosen operating point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

from .evaluation import SimulationRow

WIDTH, HEIGHT = 760, 500
LEFT, RIGHT, TOP, BOTTOM = 64, 180, 80, 56
COLOURS = {"hit_rate": "#1f77b4", "precision": "#2ca02c", "false_hit_rate": "#d62728"}
LABELS = {"hit_rate": "hit rate", "precision": "precision of hits", "false_hit_rate": "false hits"}
DASHES = ("6 4", "", "2 3")  # first rule dashed, second solid, third dotted


def threshold_chart(
    curves: Mapping[str, Sequence[SimulationRow]],
    chosen: Mapping[str, SimulationRow | None],
    *,
    title: str,
    x_range: tuple[float, float] = (0.70, 1.00),
) -> str:
    """SVG text: one set of lines per entry of ``curves`` (e.g. "plain cosine", "guarded")."""
    x0, x1 = x_range
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(threshold: float) -> float:
        return LEFT + (threshold - x0) / (x1 - x0) * plot_w

    def py(rate: float) -> float:
        return TOP + (1.0 - rate) * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="24" font-size="15" font-weight="bold">{escape(title)}</text>',
    ]
    for i in range(11):  # horizontal grid, 0..100%
        y = py(i / 10)
        out.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#e5e5e5"/>'
        )
        out.append(f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{i * 10}%</text>')
    steps = round((x1 - x0) / 0.05)
    for i in range(steps + 1):  # vertical grid every 0.05
        t = x0 + i * (x1 - x0) / steps
        x = px(t)
        out.append(
            f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + plot_h}" stroke="#e5e5e5"/>'
        )
        out.append(f'<text x="{x:.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">{t:.2f}</text>')
    out.append(
        f'<text x="{LEFT + plot_w / 2:.0f}" y="{HEIGHT - 14}" text-anchor="middle">'
        "threshold (hit iff score &gt;= threshold)</text>"
    )
    out.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>'
    )
    legend_y = TOP + 8
    for index, (rule, rows) in enumerate(curves.items()):
        dash = DASHES[index % len(DASHES)]
        style = f' stroke-dasharray="{dash}"' if dash else ""
        visible = [r for r in rows if x0 <= r.threshold <= x1]
        for key, colour in COLOURS.items():
            points = " ".join(
                f"{px(r.threshold):.1f},{py(float(getattr(r, key))):.1f}" for r in visible
            )
            out.append(
                f'<polyline points="{points}" fill="none" stroke="{colour}" '
                f'stroke-width="{1.2 if key == "false_hit_rate" else 2}"{style}/>'
            )
        legend_x = LEFT + plot_w + 14
        out.append(f'<text x="{legend_x}" y="{legend_y}" font-weight="bold">{escape(rule)}</text>')
        for key, colour in COLOURS.items():
            legend_y += 16
            out.append(
                f'<line x1="{legend_x}" y1="{legend_y - 4}" x2="{legend_x + 24}" '
                f'y2="{legend_y - 4}" stroke="{colour}" stroke-width="2"{style}/>'
            )
            out.append(f'<text x="{legend_x + 30}" y="{legend_y}">{LABELS[key]}</text>')
        legend_y += 26
        point = chosen.get(rule)
        if point is not None and x0 <= point.threshold <= x1:
            x = px(point.threshold)
            out.append(
                f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + plot_h}" '
                f'stroke="#444" stroke-width="1"{style}/>'
            )
            for key in ("hit_rate", "precision", "false_hit_rate"):
                y = py(float(getattr(point, key)))
                out.append(
                    f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4.5" fill="white" '
                    f'stroke="{COLOURS[key]}" stroke-width="2"/>'
                )
            label = (
                f"{rule}: t={point.threshold:.3f}, hits {100 * point.hit_rate:.1f}%, "
                f"precision {100 * point.precision:.1f}%, false {100 * point.false_hit_rate:.1f}%"
            )
            out.append(f'<text x="{LEFT}" y="{46 + 16 * index}" fill="#222">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
