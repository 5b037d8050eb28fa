"""pipeline/report/html.py: HTML tables and pages, and PNG figures with the same bytes on every rebuild."""

from __future__ import annotations

import hashlib

from vmpower.pipeline.report import html


def test_esc_escapes_markup_and_quotes():
    assert html.esc('<a href="x">&\'') == "&lt;a href=&quot;x&quot;&gt;&amp;&#x27;"
    assert html.esc(3) == "3"


def test_table_formats_cells_and_aligns_text_columns():
    out = html.html_table(["name", "w"], [["a<b", 1.23456], ["c", None], ["d", float("nan")], ["e", 7]],
                          row_classes=["best", "", None, ""])
    assert out.splitlines() == [
        "<table>",
        '<tr><th class="l">name</th><th>w</th></tr>',
        '<tr class="best"><td class="l">a&lt;b</td><td>1.235</td></tr>',
        '<tr><td class="l">c</td><td>-</td></tr>',
        '<tr><td class="l">d</td><td>-</td></tr>',
        '<tr><td class="l">e</td><td>7</td></tr>',
        "</table>",
    ]


def test_table_left_columns_and_empty_rows():
    out = html.html_table(["a", "b", "c"], [], left=0)
    assert out == "<table>\n<tr><th>a</th><th>b</th><th>c</th></tr>\n</table>"
    out = html.html_table(["a", "b"], [[1.0, 2.0]], left=2)
    assert '<td class="l">1.000</td><td class="l">2.000</td>' in out


def test_page_is_complete_escaped_and_ends_with_a_newline():
    page = html.html_page("A & B", ["<p>x</p>"])
    lines = page.split("\n")
    assert lines[0] == "<!DOCTYPE html>" and lines[-2] == "</html>" and lines[-1] == ""
    assert "<title>A &amp; B</title>" in page and "<h1>A &amp; B</h1>" in page
    assert page.index("<h1>") < page.index("<p>x</p>") < page.index("</body>")


def _figure(plt):
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [1, 3, 2], color=html.ZONE_COLORS["package"])
    return fig


def test_png_figures_are_byte_identical_without_software_metadata(tmp_path):
    plt = html.pyplot()
    html.save_png(_figure(plt), tmp_path / "a.png")
    html.save_png(_figure(html.pyplot()), tmp_path / "b.png")
    a, b = (tmp_path / "a.png").read_bytes(), (tmp_path / "b.png").read_bytes()
    assert a[:8] == b"\x89PNG\r\n\x1a\n"
    assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()
    assert b"Software" not in a and b"matplotlib" not in a.lower()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # no temporary left
    assert plt.get_fignums() == []  # closed


def test_pyplot_resets_styles_a_caller_changed():
    plt = html.pyplot()
    plt.rcParams["lines.linewidth"] = 9
    plt = html.pyplot()
    assert plt.rcParams["lines.linewidth"] != 9
    assert plt.rcParams["font.family"] == ["DejaVu Sans"] and plt.rcParams["savefig.dpi"] == 100


def test_message_figure(tmp_path):
    html.message_figure("no data", tmp_path / "m.png")
    html.message_figure("no data", tmp_path / "n.png")
    assert (tmp_path / "m.png").read_bytes() == (tmp_path / "n.png").read_bytes()
    html.message_figure("other", tmp_path / "o.png")
    assert (tmp_path / "m.png").read_bytes() != (tmp_path / "o.png").read_bytes()
