"""Charts for the console, drawn on the server as plain SVG (pure: data in, markup out; no script, no CDN).
Every text that goes into the markup is escaped here."""

from __future__ import annotations

from html import escape

from billing.pricing import units_to_usd, usd_text

WIDTH, HEIGHT = 720, 200
LEFT, RIGHT, TOP, BOTTOM = 64, 8, 12, 28


def nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten at or above value (at least 1): a round top for the axis."""
    top = 1
    while True:
        for step in (1, 2, 5):
            if step * top >= value:
                return step * top
        top *= 10


def daily_spend_svg(days: list[tuple[str, int]]) -> str:
    """A bar per day (label YYYY-MM-DD, nano-dollars spent), with the top of the axis in USD and the first,
    middle and last dates under it. Each bar carries its exact figure as a tooltip."""
    n = max(len(days), 1)
    top = nice_ceiling(max((cost for _, cost in days), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / n
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" class="chart" role="img" '
             f'aria-label="Spend per day, last {len(days)} days">',
             f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" class="axis"/>',
             f'<line x1="{LEFT}" y1="{TOP}" x2="{WIDTH - RIGHT}" y2="{TOP}" class="grid"/>',
             f'<text x="{LEFT - 6}" y="{TOP + 4}" text-anchor="end" class="label">${escape(_short_usd(top))}</text>',
             f'<text x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end" class="label">$0</text>']
    for i, (day, cost) in enumerate(days):
        h = 0.0 if top == 0 else plot_h * cost / top
        x = LEFT + i * slot + slot * 0.15
        parts.append(f'<rect x="{x:.1f}" y="{TOP + plot_h - h:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" '
                     f'class="bar" data-day="{escape(day)}" data-cost="{escape(units_to_usd(cost))}">'
                     f'<title>{escape(day)}: ${escape(usd_text(cost))}</title></rect>')
    for i in sorted({0, (len(days) - 1) // 2, len(days) - 1}) if days else ():
        x = LEFT + i * slot + slot / 2
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="middle" class="label">'
                     f'{escape(days[i][0][5:])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _short_usd(units: int) -> str:
    """An axis figure: no trailing zeros (0.05, 2, 500)."""
    return usd_text(units).removesuffix(".00")
