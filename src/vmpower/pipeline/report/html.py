"""What every report part draws with: HTML tables and pages, and deterministic PNG figures
(the Agg backend, fixed fonts and styles, no dates or software version in the PNG metadata, so
rebuilding gives the same bytes)."""

from __future__ import annotations

import os

from vmpower.io import atomic_path

ZONE_COLORS = {"package": "#1f77b4", "core": "#d62728", "dram": "#2ca02c", "uncore": "#9467bd"}
_CSS = (
    "body{font-family:sans-serif;font-size:13px;margin:12px;color:#222}"
    "table{border-collapse:collapse;margin:6px 0 18px}"
    "th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}"
    "th{background:#f0f0f0}td.l,th.l{text-align:left}tr.best td{background:#e8f4e8;font-weight:bold}"
    "code{font-size:12px}h2{font-size:16px;margin-top:18px}"
)


def esc(v) -> str:
    import html

    return html.escape(str(v), quote=True)


def _fmt(v, fmt: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if isinstance(v, float):
        return format(v, fmt)
    return str(v)


def html_table(header: list[str], rows: list[list], left: int = 1, row_classes: list[str] | None = None) -> str:
    """A plain HTML table; the first ``left`` columns are left-aligned (text)."""
    out = ["<table>", "<tr>" + "".join(
        f'<th class="l">{esc(h)}</th>' if i < left else f"<th>{esc(h)}</th>" for i, h in enumerate(header)
    ) + "</tr>"]
    for n, row in enumerate(rows):
        cls = f' class="{row_classes[n]}"' if row_classes and row_classes[n] else ""
        out.append(f"<tr{cls}>" + "".join(
            f'<td class="l">{esc(_fmt(v))}</td>' if i < left else f"<td>{esc(_fmt(v))}</td>"
            for i, v in enumerate(row)
        ) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def html_page(title: str, body: list[str]) -> str:
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', f"<title>{esc(title)}</title>",
        f"<style>{_CSS}</style>", "</head>", "<body>", f"<h1>{esc(title)}</h1>", *body, "</body>", "</html>", "",
    ])


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcdefaults()
    plt.rcParams.update({
        "font.family": "DejaVu Sans", "font.size": 9, "axes.titlesize": 10, "figure.dpi": 100,
        "savefig.dpi": 100, "path.simplify": True, "svg.hashsalt": "vmpower", "axes.grid": True,
        "grid.alpha": 0.3,
    })
    return plt


def save_png(fig, path: str | os.PathLike) -> None:
    """PNG without software/date metadata (same bytes on every rebuild), written atomically."""
    plt = pyplot()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)


def message_figure(text: str, path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 1.6))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, wrap=True)
    save_png(fig, path)
