"""What a search returns: the ranked hits of each query, with the token x vector similarities a
heatmap draws (``vcb_utils.viz``, ``vcb_utils.widgets``)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from vcb_utils.model import TextEmbedding, VideoColBERT
from vcb_utils.scoring import token_shares, token_similarities
from vcb_utils.search.collection import Collection, branch_columns

Branch = Literal["both", "F", "V"]
PAD_TOKEN = "<pad>"


@dataclass
class Hit:
    """One retrieved video (``rank`` 1 = best, ``row`` in the index) and its heatmap data.

    ``sim_f`` is ``[query vectors, valid frames]``; ``sim_v`` is ``[query vectors, valid V]``
    whose columns are the valid contextualised frames in order, then the expansion tokens.
    A branch the model does not use has None scores and matrix.
    """

    rank: int
    row: int
    id: str
    path: str
    score_total: float
    score_f: float | None
    score_v: float | None
    sim_f: torch.Tensor | None
    sim_v: torch.Tensor | None
    caption: str = ""


@dataclass
class QueryResult:
    """The hits of one query, ranked by ``branch``; ``tokens`` label the rows of the matrices."""

    query: str
    branch: Branch
    tokens: list[str]
    expansion: list[bool]
    """True for the rows of query-expansion (pad) positions."""
    hits: list[Hit]

    def hit(self, rank: int) -> Hit:
        """The hit at ``rank`` (1 = best); ValueError when there is no such rank."""
        if not 1 <= rank <= len(self.hits):
            raise ValueError(f"rank {rank} is not among the {len(self.hits)} hits")
        return self.hits[rank - 1]


def query_result(
    collection: Collection,
    model: VideoColBERT,
    query: str,
    text: TextEmbedding,
    i: int,
    branch: Branch,
    rows: list[int],
) -> QueryResult:
    """The result of query ``i`` of ``text`` whose top rows are ``rows``, best first."""
    tokens, expansion = token_labels(model, text.ids[i], text.mask[i])
    vectors = text.vectors[i][text.mask[i]]
    records = collection.records(rows)
    hits = [make_hit(collection, rank, record, vectors) for rank, record in enumerate(records, 1)]
    return QueryResult(query, branch, tokens, expansion, hits)


def make_hit(collection: Collection, rank: int, record: dict, query: torch.Tensor) -> Hit:
    """The hit of ``record`` (a ``Collection.records`` entry) for the valid ``query`` vectors."""
    row = record["row"]
    stored, mask = collection.read_rows(torch.tensor([row]))
    sims, scores = {}, {}
    for name in collection.branches:
        columns = branch_columns(name, collection.frames)
        valid = stored[0, columns][mask[0, columns]].float()
        sims[name] = token_similarities(query, valid)
        scores[name] = float(token_shares(sims[name]).sum())
    return Hit(
        rank=rank,
        row=row,
        id=record["id"],
        path=record["path"],
        score_total=sum(scores.values()),
        score_f=scores.get("F"),
        score_v=scores.get("V"),
        sim_f=sims.get("F"),
        sim_v=sims.get("V"),
        caption=record.get("caption") or "",
    )


def token_labels(
    model: VideoColBERT, ids: torch.Tensor, mask: torch.Tensor
) -> tuple[list[str], list[bool]]:
    """One label per scoring position of a tokenised query, and which are pad (expansion)."""
    real = model.tokenizer.real_token_mask(ids[None])[0]
    labels = [
        model.tokenizer.decode([int(token)]).strip() if is_real else PAD_TOKEN
        for token, is_real in zip(ids.tolist(), real.tolist(), strict=True)
    ]
    keep = mask.tolist()
    return (
        [label for label, used in zip(labels, keep, strict=True) if used],
        [not r for r, used in zip(real.tolist(), keep, strict=True) if used],
    )


def check_queries(query: str | Sequence[str]) -> list[str]:
    """The queries as a list; ValueError for none or an empty one."""
    queries = [query] if isinstance(query, str) else list(query)
    if not queries:
        raise ValueError("no query given")
    for text in queries:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"empty query {text!r}: a query needs at least one word")
    return queries


def warn_truncated(model: VideoColBERT, queries: list[str]) -> None:
    """A warning for each query longer than the model's ``max_words`` tokens."""
    longer = model.tokenizer(queries, context_length=model.cfg.max_words + 1)
    lengths = model.tokenizer.real_token_mask(longer).sum(dim=1)
    for text, length in zip(queries, lengths.tolist(), strict=True):
        if length > model.cfg.max_words:
            warnings.warn(
                f"query truncated to max_words={model.cfg.max_words} tokens: {text[:60]!r}...",
                stacklevel=3,
            )
