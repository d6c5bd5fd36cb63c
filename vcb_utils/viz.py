"""MaxSim heatmaps and ranked-result strips: which frame each query token matched, and why.

Every function builds and returns a ``matplotlib.figure.Figure`` without pyplot (no global
state, nothing shown): a notebook displays the figure, a script calls ``fig.savefig(...)``.

A heatmap stacks the two branches of one (query, video) pair on shared columns: a strip of the
sampled frames on top, then F (query tokens x frames, MMS_F) and V (query tokens x
contextualised frames + visual expansion tokens, MMS_V). Each row's maximum, the MaxSim choice,
is outlined; the bars beside each matrix are the rows' contributions (row max / number of query
vectors), which add up to the branch score. Query-expansion rows (``<pad>``) take part in the
score; they are drawn in grey italics below a dashed line and can be hidden.

For the interactive explorer the same panels are also rendered without matplotlib, in
milliseconds: ``heatmap_html`` (an HTML table with the frames as column headers and each cell's
value as its tooltip) and ``strip_png`` (a row of thumbnails as one PNG).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Normalize, to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from vcb_utils.index import Hit, QueryResult, VideoIndex
from vcb_utils.scoring import token_shares
from vcb_utils.video import read_clip

BRANCH_TITLES = {
    "F": "F: one vector per frame",
    "V": "V: contextualised frames + visual expansion tokens",
}
ARGMAX_GID = "maxsim-argmax"
AXES_LABEL = "maxsim-{}"
EXPANSION_COLOUR = "0.45"
MARK_COLOUR = "#ff3b30"
ROW_INCHES = 0.24
"""Height of one query row."""
RANKED_BY = {"both": "MMS_F + MMS_V", "F": "MMS_F", "V": "MMS_V"}
BRANCH_SHORT = {"F": "F (frames)", "V": "V (frames in context + expansion)"}
FrameSource = Mapping[str, np.ndarray] | Callable[[Hit], np.ndarray | None]
"""Frames of a hit's video: a mapping from video id, or a function of the hit."""


@dataclass
class Panel:
    """One branch of a heatmap: the rows drawn, their MaxSim choices and contributions."""

    branch: str
    """``F`` or ``V``."""
    matrix: np.ndarray
    """``[rows drawn, columns]`` similarities."""
    tokens: list[str]
    expansion: list[bool]
    """True for query-expansion (pad) rows."""
    argmax: list[int]
    """The column of each row's maximum: the vector MaxSim picks for that token."""
    contribution: np.ndarray
    """Row max / number of query vectors; all rows together sum to ``score``."""
    score: float
    hidden: float
    """The part of ``score`` that comes from rows not drawn."""


def heatmap_panels(result: QueryResult, rank: int = 1, show_expansion: bool = True) -> list[Panel]:
    """The F and V panels (those the model has) of the hit at ``rank`` (1 = best)."""
    hit = result.hit(rank)
    shown = [show_expansion or not pad for pad in result.expansion]
    panels = []
    for branch, sim in (("F", hit.sim_f), ("V", hit.sim_v)):
        if sim is None:
            continue
        matrix = sim.float().numpy()
        contribution = token_shares(sim.float()).numpy()
        keep = np.array(shown)
        panels.append(
            Panel(
                branch=branch,
                matrix=matrix[keep],
                tokens=[t for t, s in zip(result.tokens, shown, strict=True) if s],
                expansion=[p for p, s in zip(result.expansion, shown, strict=True) if s],
                argmax=matrix[keep].argmax(axis=1).tolist(),
                contribution=contribution[keep],
                score=float(contribution.sum()),
                hidden=float(contribution[~keep].sum()),
            )
        )
    return panels


def maxsim_heatmap(
    result: QueryResult,
    rank: int = 1,
    frames: np.ndarray | None = None,
    *,
    show_expansion: bool = True,
    width: float = 10.0,
    cmap: str = "viridis",
) -> Figure:
    """Token x frame (F) and token x vector (V) heatmaps of the hit at ``rank``.

    ``frames``: the video's sampled frames, uint8 ``[T, H, W, 3]`` as indexed (see
    ``index_frames``), drawn above the columns; None draws no strip. (Without F and without
    ``frames``, a temporal-only hit cannot tell frames from expansion tokens: all V columns are
    then labelled as frames.)
    """
    hit = result.hit(rank)
    panels = heatmap_panels(result, rank, show_expansion)
    n_frames = _frame_columns(hit, frames)
    n_columns = max(p.matrix.shape[1] for p in panels)
    ratios = [n_frames, max(n_columns - n_frames, 0.01), max(3.0, 0.3 * n_columns), 0.4]
    cell = (width - 2.6) / sum(ratios)
    heights = ([cell] if frames is not None else []) + [
        len(p.tokens) * ROW_INCHES + 0.3 for p in panels
    ]
    fig = Figure(figsize=(width, sum(heights) + 0.9 * len(panels) + 1.3), layout="constrained")
    grid = fig.add_gridspec(len(heights), 4, width_ratios=ratios, height_ratios=heights)
    first = 0
    if frames is not None:
        _draw_strip(fig.add_subplot(grid[0, :2]), frames, n_columns)
        first = 1
    norm = _shared_norm(panels)
    for i, panel in enumerate(panels, start=first):
        heat = fig.add_subplot(grid[i, :2] if panel.matrix.shape[1] > n_frames else grid[i, 0])
        image = _draw_panel(heat, panel, n_frames, norm, cmap)
        _draw_contributions(fig.add_subplot(grid[i, 2], sharey=heat), panel)
    fig.colorbar(image, cax=fig.add_subplot(grid[first:, 3]), label="cosine similarity")
    fig.suptitle(_heatmap_title(result, hit), fontsize=11)
    fig.legend(handles=_legend_handles(panels), loc="outside lower center", ncols=3, fontsize=8)
    return fig


def ranked_results_figure(
    result: QueryResult, frames: FrameSource, k: int | None = None, max_width: float = 10.0
) -> Figure:
    """The top-``k`` hits (all by default) as thumbnail strips with their scores."""
    hits = result.hits[:k]
    if not hits:
        raise ValueError(f"no hits to draw for {result.query!r}")
    load = frames if callable(frames) else lambda hit: frames.get(hit.id)
    strips = [load(hit) for hit in hits]
    columns = max((len(f) for f in strips if f is not None), default=1)
    width = min(max_width, 0.8 * columns + 3.6)
    fig = Figure(figsize=(width, 0.8 * len(hits) + 0.8), layout="constrained")
    axes = fig.subplots(len(hits), 1, squeeze=False)[:, 0]
    for ax, hit, hit_frames in zip(axes, hits, strips, strict=True):
        _draw_hit_row(ax, hit, hit_frames, columns)
    axes[-1].set_xlabel("sampled frames, in order", fontsize=9)
    fig.suptitle(
        f'Top {len(hits)} for "{_short(result.query, 50)}"\nranked by {RANKED_BY[result.branch]}',
        fontsize=10,
    )
    return fig


def index_frames(index: VideoIndex, hit: Hit, size: int = 64) -> np.ndarray:
    """The frames the index encoded for ``hit`` (same sampling), short side ``size`` pixels."""
    clip = read_clip(
        hit.path, framerate=index.framerate, max_frames=index.config["max_frames"], size=size
    )
    return clip.frames


def strip_png(frames: np.ndarray, height: int = 28, gap: int = 2) -> bytes:
    """The frames as one row of square thumbnails ``height`` pixels high, as PNG bytes."""
    from PIL import Image  # a dependency of matplotlib

    squares = [
        Image.fromarray(_square(frame)).resize((height, height), Image.Resampling.BILINEAR)
        for frame in frames
    ]
    strip = Image.new("RGB", (len(squares) * (height + gap) - gap, height), "white")
    for i, square in enumerate(squares):
        strip.paste(square, (i * (height + gap), 0))
    return _png(strip)


def png_data_uri(data: bytes) -> str:
    """PNG bytes as a ``data:`` URI, for an ``<img>`` inside HTML."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def heatmap_html(
    result: QueryResult,
    rank: int = 1,
    frames: np.ndarray | None = None,
    *,
    show_expansion: bool = True,
    cmap: str = "viridis",
    cell: int = 18,
) -> str:
    """The panels of ``maxsim_heatmap`` as one HTML table, F and V side by side.

    One row per query token (pad rows in grey italics, or left out with
    ``show_expansion=False``), one column per frame (``frames``, if given, as thumbnails in
    the header) and per visual expansion token; each row's MaxSim choice is outlined in red,
    every cell's value is its tooltip, and a bar after each panel is the row's share of the
    branch score. Colours share one scale over both panels, as in the figure. Style:
    ``HEATMAP_CSS``.
    """
    hit = result.hit(rank)
    panels = heatmap_panels(result, rank, show_expansion)
    n_frames = _frame_columns(hit, frames)
    norm = _shared_norm(panels)
    colours = matplotlib.colormaps[cmap]
    thumbs = [] if frames is None else [png_data_uri(_png_square(f, cell)) for f in frames]
    titles, headers = ['<th class="vcb-hm-token"></th>'], ['<th class="vcb-hm-token">token</th>']
    for panel in panels:
        titles.append(
            f'<th class="vcb-hm-panel" colspan="{panel.matrix.shape[1] + 1}">'
            f"{BRANCH_SHORT[panel.branch]}: MMS_{panel.branch} = {panel.score:.3f}</th>"
        )
        for column in range(panel.matrix.shape[1]):
            name = _column_name(column, n_frames)
            content = name
            if column < len(thumbs):
                content = (
                    f'<img src="{thumbs[column]}" width="{cell}" height="{cell}" alt="{name}">'
                )
            headers.append(f'<th class="vcb-hm-col" title="{name}">{content}</th>')
        headers.append('<th class="vcb-hm-share">share</th>')
    cell_colours = [_hex_colours(colours(norm(panel.matrix))) for panel in panels]
    top_share = max(float(p.contribution.max()) for p in panels) or 1.0
    first_pad = next((i for i, pad in enumerate(panels[0].expansion) if pad), None)
    rows = []
    for row, token in enumerate(panels[0].tokens):
        classes = "vcb-hm-pad" if panels[0].expansion[row] else "vcb-hm-word"
        if row == first_pad and row > 0:
            classes += " vcb-hm-first-pad"
        cells = [f'<th class="vcb-hm-token" title="{html.escape(token)}">{html.escape(token)}</th>']
        for panel, hexes in zip(panels, cell_colours, strict=True):
            for column, value in enumerate(panel.matrix[row]):
                mark = ' class="vcb-hm-max"' if column == panel.argmax[row] else ""
                tip = f"{token} x {_column_name(column, n_frames)} ({panel.branch}): {value:.3f}"
                colour = hexes[row][column]
                cells.append(
                    f'<td{mark} style="background:{colour}" title="{html.escape(tip)}"></td>'
                )
            share = float(panel.contribution[row])
            cells.append(
                f'<td class="vcb-hm-share" title="{share:.4f} of MMS_{panel.branch}">'
                f'<div style="width:{max(0.0, share / top_share) * 100:.0f}%"></div></td>'
            )
        rows.append(f'<tr class="{classes}">{"".join(cells)}</tr>')
    scores = _heatmap_title(result, hit).split("\n")[1]
    title = f'{hit.id} (rank {hit.rank}): {scores} for "{_short(result.query, 60)}"'
    hidden = [f"{p.hidden:.3f} of MMS_{p.branch}" for p in panels if p.hidden]
    if hidden:
        title += "; the hidden <pad> rows carry " + ", ".join(hidden)
    title = html.escape(title)
    table = "".join(f"<tr>{''.join(r)}</tr>" for r in (titles, headers)) + "".join(rows)
    return (
        f'<div class="vcb-hm" style="--vcb-cell:{cell}px"><div class="vcb-hm-title">{title}</div>'
        f'<table class="vcb-hm-table">{table}</table>{_legend_html(norm, colours)}</div>'
    )


def _legend_html(norm: Normalize, colours) -> str:  # noqa: ANN001 (a matplotlib colormap)
    scale = ", ".join(to_hex(colours(x)) for x in np.linspace(0, 1, 5))
    return (
        f'<div class="vcb-hm-legend"><span>{norm.vmin:.2f}</span>'
        f'<span class="vcb-hm-scale" style="background:linear-gradient(to right, {scale})">'
        f"</span><span>{norm.vmax:.2f}</span> cosine similarity &middot; "
        '<span class="vcb-hm-max-key"></span> the column each token picks (its MaxSim)</div>'
    )


HEATMAP_CSS = """
.vcb-hm { font-size: 12px; line-height: 1.2; display: inline-block; }
.vcb-hm-title, .vcb-hm-legend { width: 0; min-width: 100%; }
.vcb-hm-table, .vcb-hm-table * { line-height: 1; }
.vcb-hm-title { margin: 0 0 4px 0; }  /* as wide as the table: it wraps */
.vcb-hm-table { border-collapse: separate; border-spacing: 1px; }
.vcb-hm-table td, .vcb-hm-table th { padding: 0; height: calc(var(--vcb-cell) * 0.65);
  font-weight: normal; font-size: 11px; }
.vcb-hm-table td { width: var(--vcb-cell); min-width: var(--vcb-cell); }
.vcb-hm-table th.vcb-hm-col { width: var(--vcb-cell); text-align: center; color: #555; }
.vcb-hm-table th.vcb-hm-col img { display: block; }
.vcb-hm-table th.vcb-hm-panel { text-align: left; padding: 0 4px; vertical-align: bottom; }
.vcb-hm-table th.vcb-hm-token { text-align: right; padding-right: 6px; white-space: nowrap;
  max-width: 84px; overflow: hidden; text-overflow: ellipsis; }
.vcb-hm-table tr.vcb-hm-pad th.vcb-hm-token { color: #777; font-style: italic; }
.vcb-hm-table tr.vcb-hm-first-pad td, .vcb-hm-table tr.vcb-hm-first-pad th {
  border-top: 2px dashed #999; }
.vcb-hm-table td.vcb-hm-max { outline: 2px solid #ff3b30; outline-offset: -2px; }
.vcb-hm-table .vcb-hm-share { width: 24px; min-width: 24px; padding: 0 6px 0 3px; }
.vcb-hm-table td.vcb-hm-share div { height: 70%; background: #1f77b4; }
.vcb-hm-table tr.vcb-hm-pad td.vcb-hm-share div { background: #999; }
.vcb-hm-legend { margin-top: 4px; color: #444; display: flex; gap: 4px; align-items: center; }
.vcb-hm-scale { display: inline-block; width: 90px; height: 10px; }
.vcb-hm-max-key { display: inline-block; width: 10px; height: 10px; outline: 2px solid #ff3b30;
  outline-offset: -2px; }
"""
"""The style of ``heatmap_html`` (the explorer adds it to the page once)."""


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (for an ``ipywidgets.Image`` or a file)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


# ---- drawing -----------------------------------------------------------------------------------
def _frame_columns(hit: Hit, frames: np.ndarray | None) -> int:
    """How many leading columns are frames (the rest of V are visual expansion tokens)."""
    if hit.sim_f is not None:
        count = hit.sim_f.shape[1]
    elif frames is not None:
        count = len(frames)
    else:
        return hit.sim_v.shape[1]
    if frames is not None and len(frames) != count:
        raise ValueError(f"{len(frames)} frames given, but {hit.id} was indexed with {count}")
    return count


def _hex_colours(rgba: np.ndarray) -> list[list[str]]:
    """``#rrggbb`` of every cell of an RGBA array ``[rows, columns, 4]`` (values 0-1)."""
    rgb = np.round(rgba[..., :3] * 255).astype(int)
    return [[f"#{r:02x}{g:02x}{b:02x}" for r, g, b in row] for row in rgb.tolist()]


def _column_name(column: int, n_frames: int) -> str:
    return f"f{column + 1}" if column < n_frames else f"e{column - n_frames + 1}"


def _png(image) -> bytes:  # noqa: ANN001 (a PIL image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _png_square(frame: np.ndarray, side: int) -> bytes:
    from PIL import Image

    square = Image.fromarray(_square(frame))
    return _png(square.resize((side, side), Image.Resampling.BILINEAR))


def _shared_norm(panels: list[Panel]) -> Normalize:
    values = np.concatenate([p.matrix.ravel() for p in panels])
    return Normalize(float(values.min()), float(values.max()))


def _draw_strip(ax: Axes, frames: np.ndarray, n_columns: int) -> None:
    """Square thumbnails over the frame columns; labelled blanks over the expansion columns."""
    for column, frame in enumerate(frames):
        ax.imshow(_square(frame), extent=(column - 0.47, column + 0.47, 0.03, 0.97))
    for column in range(len(frames), n_columns):
        ax.add_patch(Rectangle((column - 0.47, 0.03), 0.94, 0.94, color="0.85"))
        ax.text(column, 0.5, f"e{column - len(frames) + 1}", ha="center", va="center", fontsize=8)
    ax.set(xlim=(-0.5, n_columns - 0.5), ylim=(0, 1), aspect="auto", xticks=[], yticks=[])
    ax.set_title("sampled frames (columns below)", fontsize=9)
    for spine in ax.spines.values():
        spine.set_visible(False)


def _draw_panel(ax: Axes, panel: Panel, n_frames: int, norm: Normalize, cmap: str):
    """The matrix, its MaxSim marks, token labels and column labels; returns the image."""
    ax.set_label(AXES_LABEL.format(panel.branch))
    image = ax.imshow(panel.matrix, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    for row, column in enumerate(panel.argmax):
        ax.add_patch(
            Rectangle(
                (column - 0.5, row - 0.5),
                1,
                1,
                fill=False,
                edgecolor=MARK_COLOUR,
                linewidth=1.8,
                gid=ARGMAX_GID,
            )
        )
    columns = panel.matrix.shape[1]
    names = [_column_name(c, n_frames) for c in range(columns)]
    ax.set_xticks(range(columns), labels=names, fontsize=8)
    ax.set_yticks(range(len(panel.tokens)), labels=panel.tokens, fontsize=8)
    _style_expansion_rows(ax, panel.expansion)
    if columns > n_frames:
        ax.axvline(n_frames - 0.5, color="white", linewidth=1.5, linestyle="--")
    hidden = f", {panel.hidden:.3f} from hidden pad rows" if panel.hidden else ""
    ax.set_title(
        f"{BRANCH_TITLES[panel.branch]}: MMS_{panel.branch} = {panel.score:.3f}{hidden}",
        fontsize=9,
    )
    ax.set_xlabel("frame" if columns == n_frames else "frame | visual expansion", fontsize=8)
    ax.set_ylabel("query token", fontsize=8)
    return image


def _style_expansion_rows(ax: Axes, expansion: list[bool]) -> None:
    for label, pad in zip(ax.get_yticklabels(), expansion, strict=True):
        if pad:
            label.set(color=EXPANSION_COLOUR, fontstyle="italic")
    if any(expansion) and not all(expansion):
        ax.axhline(expansion.index(True) - 0.5, color="white", linewidth=1.2, linestyle="--")


def _draw_contributions(ax: Axes, panel: Panel) -> None:
    rows = np.arange(len(panel.tokens))
    colours = [EXPANSION_COLOUR if pad else "#1f77b4" for pad in panel.expansion]
    ax.barh(rows, panel.contribution, color=colours, height=0.7)
    for row, value in zip(rows, panel.contribution, strict=True):
        ax.text(value, row, f" {value:.3f}", va="center", fontsize=7)
    low = min(0.0, float(panel.contribution.min()))
    ax.set_xlim(low, max(float(panel.contribution.max()), 1e-6) * 1.6)
    ax.tick_params(labelleft=False, labelsize=7)
    ax.set_title(f"share of MMS_{panel.branch}", fontsize=9)
    ax.set_xlabel("row max / rows", fontsize=8)


def _legend_handles(panels: list[Panel]) -> list:
    handles = [
        Patch(fill=False, edgecolor=MARK_COLOUR, linewidth=1.8, label="row max (MaxSim choice)"),
        Patch(color="#1f77b4", label="query word token"),
    ]
    if any(any(p.expansion) for p in panels):
        handles.append(Patch(color=EXPANSION_COLOUR, label="query expansion (<pad>) row"))
    handles.append(Line2D([], [], color="0.3", linestyle="--", label="pad rows | expansion cols"))
    return handles


def _heatmap_title(result: QueryResult, hit: Hit) -> str:
    parts = [
        f"MMS_{b} = {s:.3f}" for b, s in (("F", hit.score_f), ("V", hit.score_v)) if s is not None
    ]
    total = " + ".join(parts) + (f" = {hit.score_total:.3f}" if len(parts) > 1 else "")
    return f'"{_short(result.query, 90)}" vs {hit.id} (rank {hit.rank})\n{total}'


def _draw_hit_row(ax: Axes, hit: Hit, frames: np.ndarray | None, columns: int) -> None:
    """One hit: its frames left-aligned, one unit per frame; its id and scores on the right."""
    if frames is None or len(frames) == 0:
        ax.text(0.02, 0.5, "frames unavailable", va="center", transform=ax.transAxes)
    else:
        ax.imshow(_strip(frames), extent=(0, len(frames), 0, 1))
    ax.set(xlim=(0, columns), ylim=(0, 1), xticks=[], yticks=[], aspect="equal", anchor="W")
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_ylabel(f"#{hit.rank}", rotation=0, ha="right", va="center", fontsize=10)
    scores = [
        f"MMS_{b} {s:.3f}" for b, s in (("F", hit.score_f), ("V", hit.score_v)) if s is not None
    ]
    text = f"{hit.id}\ntotal {hit.score_total:.3f}\n" + "  ".join(scores)
    ax.text(1.03, 0.5, text, va="center", fontsize=8, transform=ax.transAxes, clip_on=False)


def _strip(frames: np.ndarray, gap: float = 0.06) -> np.ndarray:
    """Square crops side by side, each followed by a white gap of ``gap`` frame widths."""
    squares = [_square(f) for f in frames]
    side = squares[0].shape[0]
    space = np.full((side, max(1, round(gap * side)), 3), 255, dtype=np.uint8)
    return np.concatenate([part for sq in squares for part in (sq, space)][:-1], axis=1)


def _square(frame: np.ndarray) -> np.ndarray:
    """Centre crop to a square."""
    height, width = frame.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return frame[top : top + side, left : left + side]


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
