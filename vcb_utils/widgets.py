"""``QueryExplorer``: type a query, see the ranked videos, click one to see its MaxSim heatmap.

Everything the explorer shows is plain widget state (HTML strings, button clicks), so it updates
in place in JupyterLab, and plain pytest can drive the controls and read the results (``Output``
widgets capture nothing outside a kernel). A query costs one text encoding and a MaxSim scan;
drawing is kept light so that the widget answers in a fraction of a second: the thumbnail strips
are small PNGs made once per video and reused, and only the selected hit's heatmap is drawn, as
an HTML table (``vcb_utils.viz.heatmap_html``) rather than a matplotlib figure.

Bad input (an empty query, a query of word pieces only, an empty index) shows a message in the
widget instead of raising, and empty states show text, never an empty image.
"""

from __future__ import annotations

import html
import re
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import ipywidgets as widgets
import numpy as np

from vcb_utils.branches import branches_of
from vcb_utils.index import Hit, QueryResult, VideoIndex
from vcb_utils.model import VideoColBERT
from vcb_utils.threads import torch_threads
from vcb_utils.video import VideoReadError
from vcb_utils.viz import (
    HEATMAP_CSS,
    RANKED_BY,
    heatmap_html,
    index_frames,
    png_data_uri,
    strip_png,
)

EXAMPLE_QUERY = "a red circle moves left"
SCORE_COLUMNS = (
    ("both", "total", "score_total"),
    ("F", "MMS_F", "score_f"),
    ("V", "MMS_V", "score_v"),
)
"""(branch, column title, ``Hit`` attribute) of the score columns of the ranking."""
TRUTH_MARK = "✓ ground truth"

EXPLORER_CSS = (
    HEATMAP_CSS
    + """
.vcb-explorer { font-size: 13px; }
.vcb-explorer .vcb-ranking .widget-html, .vcb-explorer .vcb-heatmap { margin-top: 0;
  margin-bottom: 0; }
.vcb-explorer .vcb-ranking .widget-html-content { line-height: 1.2; }
.vcb-explorer .vcb-body { gap: 16px; align-items: flex-start; }
.vcb-explorer .vcb-controls { align-items: center; gap: 12px; }
.vcb-explorer .vcb-row, .vcb-explorer .vcb-header {
  display: grid; grid-template-columns: 28px var(--vcb-strip, 130px) minmax(110px, 1fr)
  repeat(3, 50px); align-items: center; column-gap: 6px; padding: 1px 4px; }
.vcb-explorer .vcb-header { font-weight: bold; border-bottom: 1px solid #bbb; font-size: 11px;
  white-space: nowrap; }
.vcb-explorer .vcb-row { border-bottom: 1px solid #eee; }
.vcb-explorer .vcb-row img { display: block; }
.vcb-explorer .vcb-nostrip { color: #888; font-style: italic; font-size: 11px; }
.vcb-explorer .vcb-score { text-align: right; font-variant-numeric: tabular-nums; }
.vcb-explorer .vcb-ranked { font-weight: bold; background: #fff3cd; }
.vcb-explorer .vcb-hit-text { overflow: hidden; font-size: 12px; line-height: 1.2; }
.vcb-explorer .vcb-caption { color: #555; overflow-wrap: anywhere; }
.vcb-explorer .vcb-truth { color: #0a7d2c; font-weight: bold; white-space: nowrap; }
.vcb-explorer .vcb-hit { cursor: pointer; }
.vcb-explorer .vcb-hit .vcb-hit-button { z-index: 1; opacity: 0.0001; cursor: pointer; }
.vcb-explorer .vcb-hit:hover .vcb-row { background: #f0f6ff; }
.vcb-explorer .vcb-hit.vcb-selected .vcb-row { background: #dbeafe;
  box-shadow: inset 3px 0 0 #1d4ed8; }
.vcb-explorer .vcb-status { color: #555; font-size: 12px; }
.vcb-explorer.vcb-busy .vcb-ranking, .vcb-explorer.vcb-busy .vcb-heatmap { opacity: 0.45; }
.vcb-explorer .vcb-message .vcb-info { color: #555; }
.vcb-explorer .vcb-message .vcb-warning { color: #b45309; }
"""
)
"""The explorer's style, added to the page by an HTML widget inside it."""
RANKING_COLUMNS_PX = 28 + 110 + 3 * 50 + 5 * 6 + 2 * 4
"""The ranking's width besides the thumbnail strip (``.vcb-row``: columns, gaps, padding), at
its narrowest caption column."""


def evenly_spaced(count: int, at_most: int) -> list[int]:
    """At most ``at_most`` of ``range(count)``, evenly spaced, the first and last included."""
    if count <= at_most:
        return list(range(count))
    return np.linspace(0, count - 1, at_most).round().astype(int).tolist()


def caption_vocabulary(captions: Iterable[str]) -> set[str]:
    """The lower-case words of some captions (e.g. the training set's)."""
    return {word for text in captions for word in re.findall(r"[a-z0-9]+", text.lower())}


def normalise_caption(text: str) -> str:
    """Lower case, single spaces, no final full stop: how a typed query is compared with the
    captions to find its ground-truth video."""
    return " ".join(text.lower().split()).rstrip(" .")


def query_problem(query: str, model: VideoColBERT, index: VideoIndex) -> str | None:
    """Why ``query`` cannot be searched (empty, word pieces only, empty index), or None."""
    if len(index) == 0:
        return "The index has no videos: build it with VideoIndex.build(model, paths)."
    if not query.strip():
        return f"Type a query first, for example '{EXAMPLE_QUERY}'."
    pieces = model.tokenizer.pieces(query)
    if not any(whole and re.search(r"\w", text) for text, whole in pieces):
        shown = " · ".join(text.strip() for text, _ in pieces)
        return (
            f"No whole word in '{query}': the tokenizer splits it into word pieces ({shown}) "
            f"that carry no meaning the model learned. Try words from the captions, for "
            f"example '{EXAMPLE_QUERY}'."
        )
    return None


def ranking_header(branch: str, strip_width: int) -> str:
    """The header of the ranking; the column that orders it (``branch``) is marked."""
    cells = ["#", "frames", "video · caption"]
    for name, title, _ in SCORE_COLUMNS:
        cells.append(
            f'<span class="vcb-score vcb-ranked" title="ranked by this column">{title} ▼</span>'
            if name == branch
            else f'<span class="vcb-score">{title}</span>'
        )
    cells = [c if c.startswith("<") else f"<span>{c}</span>" for c in cells]
    return f'<div class="vcb-header" style="--vcb-strip:{strip_width}px">{"".join(cells)}</div>'


def hit_row(
    hit: Hit,
    branch: str,
    strip: bytes | None,
    strip_width: int,
    captions: Sequence[str] = (),
    truth: bool = False,
) -> str:
    """One hit of the ranking as HTML: rank, thumbnail strip (or a note when the video cannot be
    read), id, captions, ground-truth mark and the three scores (the ranked one marked)."""
    frames = (
        f'<img src="{png_data_uri(strip)}" alt="frames of {html.escape(hit.id)}">'
        if strip
        else '<span class="vcb-nostrip">frames unavailable</span>'
    )
    text = f"<b>{html.escape(hit.id)}</b>"
    if truth:
        text += f' <span class="vcb-truth">{TRUTH_MARK}</span>'
    if captions:
        more = f" (+{len(captions) - 1} more)" if len(captions) > 1 else ""
        every = html.escape("\n".join(captions))
        text += f'<div class="vcb-caption" title="{every}">{html.escape(captions[0])}{more}</div>'
    scores = []
    for name, _, attribute in SCORE_COLUMNS:
        value = getattr(hit, attribute)
        ranked = " vcb-ranked" if name == branch else ""
        shown = "–" if value is None else f"{value:.3f}"
        scores.append(f'<span class="vcb-score{ranked}">{shown}</span>')
    return (
        f'<div class="vcb-row" style="--vcb-strip:{strip_width}px"><span>#{hit.rank}</span>'
        f'<span>{frames}</span><div class="vcb-hit-text">{text}</div>{"".join(scores)}</div>'
    )


class QueryExplorer:
    """Text box + Search (or Enter), ``k`` slider, ranking branch, the ranked videos, and the
    MaxSim heatmap of the selected one beside them. Click a result (its row or its frames) to
    select it; ``select(rank)`` does the same from code.

    Display it as the last expression of a cell (or with ``display``). State after each update:
    ``result`` (the last ``QueryResult`` or None), ``selected`` (the rank shown in the heatmap),
    ``truth`` (ids of the videos whose caption the query is), ``error`` (the message shown, or
    None), ``notes`` (warnings about the query) and ``timings`` (seconds for the search, the
    frames decoded and the drawing; ``total`` from the query to the updated widget).

    ``captions``: video id -> its caption(s), shown under each hit and used to mark the
    ground-truth video when the query is one of them (without it, the captions the index stores,
    if any). ``vocabulary``: words the model was trained on (``caption_vocabulary``), to flag
    unseen ones. ``threads``: at most this many torch threads during a search (None keeps
    torch's setting); one query is small work, and on a busy 2-core machine two threads made it
    100x slower.

    Sizes: the ranking's thumbnail strips show at most ``strip_frames`` frames (evenly spaced)
    of ``strip_height`` pixels, the heatmap cells are ``heatmap_cell`` pixels wide; with the
    tiny model the heatmap stands beside a ranking of 10 whenever the notebook is 1100 px wide
    (narrower, it goes under it). Captions wrap, so the "then ..." half that tells order twins
    apart stays visible.
    """

    def __init__(
        self,
        index: VideoIndex,
        model: VideoColBERT,
        *,
        k: int = 5,
        max_k: int = 20,
        captions: Mapping[str, str | Sequence[str]] | None = None,
        vocabulary: Iterable[str] | None = None,
        strip_height: int = 20,
        strip_frames: int = 6,
        heatmap_cell: int = 14,
        threads: int | None = 1,
    ) -> None:
        self.index, self.model, self.threads = index, model, threads
        self.vocabulary = set(vocabulary) if vocabulary is not None else None
        self.captions = {
            vid: [text] if isinstance(text, str) else list(text)
            for vid, text in (captions or {}).items()
        }
        self._caption_owner: dict[str, set[str]] = {}
        for vid, texts in self.captions.items():
            for text in texts:
                self._caption_owner.setdefault(normalise_caption(text), set()).add(vid)
        self.strip_height, self.heatmap_cell = strip_height, heatmap_cell
        self._strip_frames = min(strip_frames, int(index.config["max_frames"]))
        self._strip_width = self._strip_frames * (strip_height + 2) - 2
        self.result: QueryResult | None = None
        self.selected: int | None = None
        self.truth: set[str] = set()
        self.error: str | None = None
        self.notes: list[str] = []
        self.timings: dict[str, float] = {}
        self._frames: dict[str, np.ndarray | None] = {}
        self._strips: dict[str, bytes | None] = {}
        max_k = max(1, min(max_k, len(index)))
        self._make_widgets(k, max_k)
        self.view = self._layout()
        self._show_message(f"Type a query and press Enter, for example '{EXAMPLE_QUERY}'.", "info")

    # ---- controls ------------------------------------------------------------------------------
    def _make_widgets(self, k: int, max_k: int) -> None:
        self.query = widgets.Text(
            placeholder=f"e.g. {EXAMPLE_QUERY} (Enter to search)",
            continuous_update=False,
            layout=widgets.Layout(width="min(560px, 70%)"),
        )
        self.search_button = widgets.Button(description="Search", button_style="primary")
        self.k = widgets.IntSlider(
            value=min(k, max_k),
            min=1,
            max=max_k,
            description="k",
            continuous_update=False,
            style={"description_width": "initial"},
            layout=widgets.Layout(width="240px"),
        )
        options = list(branches_of(self.index.config["mode"]))
        self.branch = widgets.ToggleButtons(
            options=options,
            tooltips=[RANKED_BY[name] for name in options],
            style={"button_width": "52px"},
            layout=widgets.Layout(width="auto"),
        )
        self.show_expansion = widgets.Checkbox(
            value=True,
            description="show <pad> query rows",
            indent=False,
            layout=widgets.Layout(width="auto"),
        )
        self.message = widgets.HTML()
        self.status = widgets.HTML()
        self.header = widgets.HTML()
        self.row_html = [widgets.HTML(layout=widgets.Layout(grid_area="row")) for _ in range(max_k)]
        self.row_buttons = [self._make_button(slot) for slot in range(max_k)]
        self.rows = [self._make_row(slot) for slot in range(max_k)]
        self.heatmap = widgets.HTML(layout=widgets.Layout(display="none"))
        for widget, name in (
            (self.query, "vcb-query"),
            (self.message, "vcb-message"),
            (self.status, "vcb-status"),
            (self.heatmap, "vcb-heatmap"),
        ):
            widget.add_class(name)
        self.query.observe(lambda _: self.search(), "value")
        self.search_button.on_click(lambda _: self.search())
        self.k.observe(self._settings_changed, "value")
        self.branch.observe(self._settings_changed, "value")
        self.show_expansion.observe(lambda _: self._draw_heatmap(), "value")

    def _make_button(self, slot: int) -> widgets.Button:
        layout = widgets.Layout(grid_area="row", width="100%", height="100%", margin="0")
        button = widgets.Button(tooltip="show this video's heatmap", layout=layout)
        button.add_class("vcb-hit-button")
        button.on_click(lambda _: self.select(slot + 1))
        return button

    def _make_row(self, slot: int) -> widgets.GridBox:
        """A result row: its HTML with an invisible button on top of it, so that a click
        anywhere on the row (the frames included) selects the hit."""
        row = widgets.GridBox(
            [self.row_html[slot], self.row_buttons[slot]],
            layout=widgets.Layout(
                grid_template_areas='"row"', grid_template_columns="100%", display="none"
            ),
        )
        row.add_class("vcb-hit")
        row.add_class(f"vcb-hit-{slot + 1}")
        return row

    def _layout(self) -> widgets.VBox:
        ranking = widgets.VBox(
            [self.header, *self.rows],
            layout=widgets.Layout(
                flex="1 1 0", min_width=f"{self._strip_width + RANKING_COLUMNS_PX}px",
                max_width="760px",
            ),
        )
        ranking.add_class("vcb-ranking")
        self.heatmap.layout.flex = "0 0 auto"
        body = widgets.HBox([ranking, self.heatmap], layout=widgets.Layout(flex_flow="row wrap"))
        body.add_class("vcb-body")
        rank_by = widgets.HTML("rank by")
        controls = widgets.HBox([self.k, rank_by, self.branch, self.show_expansion])
        controls.add_class("vcb-controls")
        view = widgets.VBox(
            [
                widgets.HTML(f"<style>{EXPLORER_CSS}</style>"),
                widgets.HBox([self.query, self.search_button]),
                controls,
                self.message,
                self.status,
                body,
            ]
        )
        view.add_class("vcb-explorer")
        return view

    def _repr_mimebundle_(self, **kwargs) -> dict:
        return self.view._repr_mimebundle_(**kwargs)

    # ---- updates -------------------------------------------------------------------------------
    def search(self) -> None:
        """Run the query in the text box with the current ``k`` and branch, then redraw."""
        query = self.query.value
        problem = query_problem(query, self.model, self.index)
        if problem:
            self._fail(problem)
            return
        with self._busy():
            start = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught, torch_threads(self.threads):
                warnings.simplefilter("always")
                try:
                    result = self.index.search(
                        query, self.k.value, self.branch.value, model=self.model
                    )[0]
                except ValueError as err:
                    self._fail(str(err))
                    return
            self.timings = {"search": time.perf_counter() - start}
            self.notes = [str(w.message) for w in caught] + self._unseen_words(query)
            self.result, self.error, self.selected = result, None, 1
            self.truth = self._truth(query, result)
            self._draw_ranking()
            self._draw_heatmap()
            self._show_notes()
            self.timings["total"] = time.perf_counter() - start
            self._show_status()

    def select(self, rank: int) -> None:
        """Show the heatmap of the hit at ``rank`` (1 = best) and mark its row."""
        if self.result is None or not 1 <= rank <= len(self.result.hits):
            return
        with self._busy():
            start = time.perf_counter()
            self.selected, self.timings = rank, {}
            for slot, row in enumerate(self.rows):
                if slot + 1 == rank:
                    row.add_class("vcb-selected")
                else:
                    row.remove_class("vcb-selected")
            self._draw_heatmap()
            self.timings["total"] = time.perf_counter() - start
            self._show_status()

    def _settings_changed(self, _change: dict) -> None:
        if self.query.value.strip():
            self.search()

    @contextmanager
    def _busy(self) -> Iterator[None]:
        """Dim the results, disable Search and say so while the kernel works."""
        self.view.add_class("vcb-busy")
        self.search_button.disabled = True
        self.status.value = "⏳ working…"
        try:
            yield
        finally:
            self.search_button.disabled = False
            self.view.remove_class("vcb-busy")

    def _fail(self, message: str) -> None:
        self.result, self.selected, self.error, self.notes = None, None, message, []
        self.truth, self.timings = set(), {}
        self._show_message(message, "warning")
        self.status.value = self.header.value = self.heatmap.value = ""
        self.heatmap.layout.display = "none"
        for row in self.rows:
            row.layout.display = "none"

    def _show_message(self, text: str, kind: str) -> None:
        sign = "⚠ " if kind == "warning" else ""
        self.message.value = f'<div class="vcb-{kind}">{sign}{html.escape(text)}</div>'

    def _show_notes(self) -> None:
        self.message.value = "".join(
            f'<div class="vcb-warning">note: {html.escape(n)}</div>' for n in self.notes
        )

    def _show_status(self) -> None:
        result = self.result
        if result is None:
            return
        parts = [f"top {len(result.hits)} of {len(self.index)} videos"]
        missing = sorted(self.truth - {hit.id for hit in result.hits})
        if missing:
            parts.append(f"the video this caption describes ({', '.join(missing)}) is not in them")
        parts.append("click a result to see its heatmap")
        milliseconds = ", ".join(
            f"{name} {seconds * 1000:.0f} ms" for name, seconds in self.timings.items()
        )
        self.status.value = html.escape(" · ".join(parts)) + f" <small>({milliseconds})</small>"

    def _draw_ranking(self) -> None:
        start = time.perf_counter()
        for hit in self.result.hits:
            self._load_strip(hit)
        self.timings["frames"] = time.perf_counter() - start
        start = time.perf_counter()
        branch = self.result.branch
        self.header.value = ranking_header(branch, self._strip_width)
        for slot, row in enumerate(self.rows):
            if slot >= len(self.result.hits):
                row.layout.display = "none"
                continue
            hit = self.result.hits[slot]
            self.row_html[slot].value = hit_row(
                hit,
                branch,
                self._strips[hit.id],
                self._strip_width,
                self._captions_of(hit),
                hit.id in self.truth,
            )
            if slot + 1 == self.selected:
                row.add_class("vcb-selected")
            else:
                row.remove_class("vcb-selected")
            row.layout.display = None
        self.timings["ranking"] = time.perf_counter() - start

    def _draw_heatmap(self) -> None:
        """The heatmap of the selected hit (the pure part is ``vcb_utils.viz.heatmap_html``)."""
        if self.result is None or self.selected is None:
            return
        start = time.perf_counter()
        hit = self.result.hit(self.selected)
        frames = self._frames.get(hit.id)
        self.heatmap.value = heatmap_html(
            self.result,
            self.selected,
            frames,
            show_expansion=self.show_expansion.value,
            cell=self.heatmap_cell,
        )
        self.heatmap.layout.display = None
        self.timings["heatmap"] = time.perf_counter() - start

    def _load_strip(self, hit: Hit) -> None:
        if hit.id in self._strips:
            return
        try:
            frames = index_frames(self.index, hit, size=2 * self.strip_height)
        except VideoReadError as err:
            frames = None
            self.notes.append(str(err))
        self._frames[hit.id] = frames
        self._strips[hit.id] = None if frames is None else strip_png(
            frames[evenly_spaced(len(frames), self._strip_frames)], self.strip_height
        )

    def _captions_of(self, hit: Hit) -> list[str]:
        if hit.id in self.captions:
            return self.captions[hit.id]
        stored = getattr(hit, "caption", "")  # indexes built with captions keep them
        return [stored] if stored else []

    def _truth(self, query: str, result: QueryResult) -> set[str]:
        """The videos the query is a caption of (from ``captions``, else the hits' own)."""
        wanted = normalise_caption(query)
        truth = set(self._caption_owner.get(wanted, ()))
        truth.update(
            hit.id
            for hit in result.hits
            if any(normalise_caption(text) == wanted for text in self._captions_of(hit))
        )
        return truth

    def _unseen_words(self, query: str) -> list[str]:
        if self.vocabulary is None:
            return []
        unseen = sorted(caption_vocabulary([query]) - self.vocabulary)
        if not unseen:
            return []
        return ["not in the training captions (the model never learned them): " + ", ".join(unseen)]
