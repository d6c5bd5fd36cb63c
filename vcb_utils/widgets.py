"""``QueryExplorer``: type a query, see the ranked videos and the MaxSim heatmap of the one picked.

The figures are rendered to PNG into ``ipywidgets.Image`` widgets and the ranking into an HTML
table, so every update is plain widget state: it changes in place in JupyterLab, and plain
pytest can drive the controls and read the results (``Output`` widgets capture nothing outside a
kernel). Bad input (an empty query, a query of word pieces only, an empty index) shows a
message in the widget instead of raising.
"""

from __future__ import annotations

import html
import re
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import ipywidgets as widgets
import numpy as np
import torch

from vcb_utils.index import Hit, QueryResult, VideoIndex
from vcb_utils.model import VideoColBERT
from vcb_utils.video import VideoReadError
from vcb_utils.viz import figure_png, index_frames, maxsim_heatmap, ranked_results_figure

EXAMPLE_QUERY = "a red circle moves left"
BRANCHES = {"both": ["both", "F", "V"], "F": ["F"], "V": ["V"]}
"""The rankings each index mode offers."""


@dataclass
class Rendered:
    """What the explorer shows for one result: the ranking table and two PNG figures."""

    table_html: str
    results_png: bytes
    heatmap_png: bytes


def render_result(
    result: QueryResult,
    rank: int,
    frames: dict[str, np.ndarray | None],
    show_expansion: bool = True,
    dpi: int = 80,
) -> Rendered:
    """The ranking table, the thumbnail strips and the heatmap of the hit at ``rank``."""
    hit = result.hit(rank)
    results = ranked_results_figure(result, frames)
    heatmap = maxsim_heatmap(result, rank, frames[hit.id], show_expansion=show_expansion)
    return Rendered(results_table(result, rank), figure_png(results, dpi), figure_png(heatmap, dpi))


def results_table(result: QueryResult, selected: int | None = None) -> str:
    """The hits as an HTML table (rank, video, scores); the ``selected`` rank in bold."""
    header = "<tr><th>rank</th><th>video</th><th>total</th><th>MMS_F</th><th>MMS_V</th></tr>"
    rows = [_table_row(hit, hit.rank == selected) for hit in result.hits]
    return f'<table class="vcb-results-table">{header}{"".join(rows)}</table>'


def caption_vocabulary(captions: Iterable[str]) -> set[str]:
    """The lower-case words of some captions (e.g. the training set's)."""
    return {word for text in captions for word in re.findall(r"[a-z0-9]+", text.lower())}


def query_problem(query: str, model: VideoColBERT, index: VideoIndex) -> str | None:
    """Why ``query`` cannot be searched (empty, word pieces only, empty index), or None."""
    if len(index) == 0:
        return "The index has no videos: build it with VideoIndex.build(model, paths)."
    if not query.strip():
        return f"Type a query first, for example '{EXAMPLE_QUERY}'."
    pieces = _pieces(query, model)
    if not any(whole and re.search(r"\w", text) for text, whole in pieces):
        shown = " · ".join(text.strip() for text, _ in pieces)
        return (
            f"No whole word in '{query}': the tokenizer splits it into word pieces ({shown}) "
            f"that carry no meaning the model learned. Try words from the captions, for "
            f"example '{EXAMPLE_QUERY}'."
        )
    return None


class QueryExplorer:
    """Text box + Search (or Enter), ``k`` slider, ranking branch, ranked videos and a heatmap.

    Display it as the last expression of a cell (or with ``display``). State after each update:
    ``result`` (the last ``QueryResult`` or None), ``error`` (the message shown, or None),
    ``notes`` (warnings about the query) and ``timings`` (seconds for search and figures).

    ``vocabulary``: words the model was trained on (``caption_vocabulary``), to flag unseen
    ones. ``threads``: torch threads during a search (None keeps torch's setting); one query
    is small work, and on a busy 2-core machine two threads made it 100x slower (0.4 s vs 3 ms).
    """

    def __init__(
        self,
        index: VideoIndex,
        model: VideoColBERT,
        *,
        k: int = 5,
        max_k: int = 20,
        vocabulary: Iterable[str] | None = None,
        thumbnail_size: int = 64,
        threads: int | None = 1,
    ) -> None:
        self.index, self.model, self.threads = index, model, threads
        self.vocabulary = set(vocabulary) if vocabulary is not None else None
        self.thumbnail_size = thumbnail_size
        self.result: QueryResult | None = None
        self.error: str | None = None
        self.notes: list[str] = []
        self.timings: dict[str, float] = {}
        self._frames: dict[str, np.ndarray | None] = {}
        self._building = False
        self._make_widgets(k, max(1, min(max_k, len(index))))
        self.view = self._layout()
        self.view.add_class("vcb-explorer")

    # ---- controls ------------------------------------------------------------------------------
    def _make_widgets(self, k: int, max_k: int) -> None:
        self.query = widgets.Text(
            placeholder=f"e.g. {EXAMPLE_QUERY} (Enter to search)",
            continuous_update=False,
            layout=widgets.Layout(width="60%"),
        )
        self.search_button = widgets.Button(description="Search", button_style="primary")
        self.k = widgets.IntSlider(
            value=min(k, max_k), min=1, max=max_k, description="k", continuous_update=False
        )
        self.branch = widgets.ToggleButtons(
            options=BRANCHES[self.index.config["mode"]], description="rank by"
        )
        self.show_expansion = widgets.Checkbox(value=True, description="show <pad> query rows")
        self.selected = widgets.Dropdown(options=[], description="heatmap of")
        self.message = widgets.HTML()
        self.status = widgets.HTML()
        self.table = widgets.HTML()
        self.results_image = widgets.Image(format="png")
        self.heatmap_image = widgets.Image(format="png")
        for widget, name in (
            (self.query, "vcb-query"),
            (self.message, "vcb-message"),
            (self.table, "vcb-results"),
            (self.results_image, "vcb-results-image"),
            (self.heatmap_image, "vcb-heatmap"),
        ):
            widget.add_class(name)
        self.query.observe(lambda _: self.search(), "value")
        self.search_button.on_click(lambda _: self.search())
        self.k.observe(self._settings_changed, "value")
        self.branch.observe(self._settings_changed, "value")
        self.show_expansion.observe(lambda _: self._draw(), "value")
        self.selected.observe(lambda _: self._draw(), "value")

    def _layout(self) -> widgets.VBox:
        return widgets.VBox(
            [
                widgets.HBox([self.query, self.search_button]),
                widgets.HBox([self.k, self.branch]),
                self.message,
                self.status,
                self.table,
                self.results_image,
                widgets.HBox([self.selected, self.show_expansion]),
                self.heatmap_image,
            ]
        )

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
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught, _torch_threads(self.threads):
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
        self.result, self.error = result, None
        self._building = True
        self.selected.options = [(f"#{h.rank} {h.id}", h.rank) for h in result.hits]
        self.selected.value = 1
        self._building = False
        self._draw()

    def _settings_changed(self, _change: dict) -> None:
        if self.query.value.strip():
            self.search()

    def _fail(self, message: str) -> None:
        self.result, self.error, self.notes, self.timings = None, message, [], {}
        self._building = True
        self.selected.options = []
        self._building = False
        self.message.value = f'<div style="color:#b45309">⚠ {html.escape(message)}</div>'
        self.status.value = self.table.value = ""
        self.results_image.value = self.heatmap_image.value = b""

    def _draw(self) -> None:
        """Show ``result`` with the selected hit's heatmap (the pure part is ``render``)."""
        if self._building or self.result is None:
            return
        start = time.perf_counter()
        for hit in self.result.hits:
            self._load_frames(hit)
        shown = render_result(
            self.result, self.selected.value or 1, self._frames, self.show_expansion.value
        )
        self.table.value = shown.table_html
        self.results_image.value = shown.results_png
        self.heatmap_image.value = shown.heatmap_png
        self.timings["figures"] = time.perf_counter() - start
        self.message.value = "".join(
            f'<div style="color:#b45309">note: {html.escape(n)}</div>' for n in self.notes
        )
        search_ms, figures_ms = (self.timings[n] * 1000 for n in ("search", "figures"))
        self.status.value = (
            f"top {len(self.result.hits)} of {len(self.index)} videos: "
            f"search {search_ms:.0f} ms, figures {figures_ms:.0f} ms"
        )

    def _load_frames(self, hit: Hit) -> None:
        if hit.id not in self._frames:
            try:
                self._frames[hit.id] = index_frames(self.index, hit, self.thumbnail_size)
            except VideoReadError as err:
                self._frames[hit.id] = None
                self.notes.append(str(err))

    def _unseen_words(self, query: str) -> list[str]:
        if self.vocabulary is None:
            return []
        unseen = sorted(caption_vocabulary([query]) - self.vocabulary)
        if not unseen:
            return []
        return ["not in the training captions (the model never learned them): " + ", ".join(unseen)]


@contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count or previous)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _pieces(query: str, model: VideoColBERT) -> list[tuple[str, bool]]:
    """The query's BPE tokens as ``(text, is a whole word)``; a word ends with a space."""
    texts = [model.tokenizer.decode([token]) for token in model.tokenizer.encode(query)]
    starts = [True] + [text.endswith(" ") for text in texts[:-1]]
    return [(text, start and text.endswith(" ")) for text, start in zip(texts, starts, strict=True)]


def _table_row(hit: Hit, bold: bool) -> str:
    cells = [
        f"#{hit.rank}",
        html.escape(hit.id),
        f"{hit.score_total:.3f}",
        *("–" if s is None else f"{s:.3f}" for s in (hit.score_f, hit.score_v)),
    ]
    style = ' style="font-weight:bold"' if bold else ""
    return f"<tr{style}>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"
