"""Retrieval metrics: R@1, R@5, R@10, median and mean rank (see ``docs/method.md``).

Rows of a similarity matrix are queries and columns the gallery; the target of row ``i``
is column ``i``. The rank of a query is the number of *other* columns scoring at least as
high as its target (0-based), so a tie counts against the model: a model that scores
everything equal gets R@1 = 0, where the reference code (DRL, CLIP4Clip) counts every tied
column as a separate hit and lets it pass. For continuous scores the two agree.

Ranks are counted with one comparison per row block, on the device of the input, so a
``[10k, 1k]`` matrix needs no more than the matrix itself plus a few MiB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

Matrix = np.ndarray | torch.Tensor
PostProcessing = Literal["none", "dual_softmax", "inverted_softmax"]
V2TRule = Literal["all_captions", "clip4clip"]

METRIC_KEYS = ("R1", "R5", "R10", "MdR", "MnR")
METRIC_LABELS = ("R@1", "R@5", "R@10", "MdR", "MnR")
COMPARISONS_PER_BLOCK = 1 << 24
"""Score comparisons materialised at once when counting ranks (16 MiB of booleans)."""


def retrieval_metrics(sim: Matrix) -> dict[str, float]:
    """R@1/5/10 (percent), MdR and MnR of a ``[n_queries, n_gallery]`` similarity matrix.

    The target of row ``i`` is column ``i``; ``n_queries <= n_gallery``, so extra columns are
    distractors. Accepts a numpy array or a tensor of any real dtype, on any device.
    """
    sim = _as_matrix(sim)
    n_rows, n_cols = sim.shape
    if n_rows > n_cols:
        raise ValueError(
            f"more queries than gallery items ({n_rows} > {n_cols}): row i needs column i"
        )
    rows = torch.arange(n_rows, device=sim.device)
    return _summarise(_count_at_least(sim, sim[rows, rows]) - 1)


def multi_caption_metrics(
    sim: Matrix,
    caption_to_video: Sequence[int] | np.ndarray | torch.Tensor,
    postprocessing: PostProcessing = "none",
    temperature: float = 0.01,
    v2t_rule: V2TRule = "all_captions",
) -> dict[str, dict[str, float]]:
    """Text-to-video and video-to-text metrics with any number of captions per video.

    Args:
        sim: ``[n_captions, n_videos]`` caption-video similarities.
        caption_to_video: for each caption row, the column of its video. Every video needs at
            least one caption; counts may differ between videos.
        postprocessing: see ``postprocess``; applied separately in each direction, over the
            queries of that direction. Off (``"none"``) by default.
        temperature: softmax temperature of the post-processing.
        v2t_rule: how a video ranks the captions (below).

    Returns:
        ``{"t2v": metrics, "v2t": metrics}`` with the keys of ``retrieval_metrics``.

    Text to video ranks each caption against all videos, its own video being the target.
    Video to text starts from the video's best caption (its highest-scoring own caption) and
    counts what scores at least as high:

    - ``"all_captions"`` (default): the captions of *other* videos, every one of them (the
      video's own other captions do not count);
    - ``"clip4clip"``: the other videos' caption *groups*, each group scored by its best
      caption for this video, so a video ranks the other videos, not their captions (the
      rule of CLIP4Clip's ``tensor_video_to_text_sim``, which later papers report; ties
      still count against the model). Its ranks are never worse than ``"all_captions"``'s.

    With one caption per video in column order both rules give ``retrieval_metrics(sim.T)``,
    and text to video gives ``retrieval_metrics(sim)``.
    """
    if v2t_rule not in ("all_captions", "clip4clip"):
        raise ValueError(f"unknown video-to-text rule {v2t_rule!r}; use all_captions or clip4clip")
    sim = _as_matrix(sim)
    owner = _check_owners(caption_to_video, sim)
    t2v = postprocess(sim, postprocessing, temperature)
    v2t = postprocess(sim.T, postprocessing, temperature).T
    video_ranks = _video_ranks if v2t_rule == "all_captions" else _video_group_ranks
    return {
        "t2v": _summarise(_caption_ranks(t2v, owner)),
        "v2t": _summarise(video_ranks(v2t, owner)),
    }


def postprocess(sim: Matrix, method: PostProcessing = "none", temperature: float = 0.01) -> Matrix:
    """Re-score a ``[n_queries, n_gallery]`` matrix with the other test queries.

    - ``"none"``: return ``sim`` unchanged (the default).
    - ``"dual_softmax"``: ``sim * softmax(sim / temperature, dim=0)``, the dual softmax of
      CAMoE / DSL (Cheng et al., 2021).
    - ``"inverted_softmax"``: ``softmax(sim / temperature, dim=0)``, the inverted softmax of
      Bogolin et al. (2022, "Cross Modal Retrieval with Querybank Normalisation") with the
      test queries as the query bank.

    Both normalise every gallery column over all test queries, so a query's score depends
    on the other queries: the numbers are not comparable to plain ones and must be reported
    as post-processed. Computed in float64, where ``exp`` does not underflow to exact ties for
    the usual temperatures as it does in float32; returns the type of ``sim`` (numpy or tensor).
    """
    if method == "none":
        return sim
    if method not in ("dual_softmax", "inverted_softmax"):
        raise ValueError(
            f"unknown post-processing {method!r}; use none, dual_softmax or inverted_softmax"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be positive; got {temperature}")
    scores = _as_matrix(sim).to(torch.float64)
    weights = torch.softmax(scores / temperature, dim=0)
    out = scores * weights if method == "dual_softmax" else weights
    return out.numpy(force=True) if isinstance(sim, np.ndarray) else out


def format_metrics_table(results: dict[str, dict[str, float]]) -> str:
    """A fixed-width table, one row per entry (e.g. ``"t2v both"``), columns R@1 ... MnR."""
    missing = {name: [k for k in METRIC_KEYS if k not in m] for name, m in results.items()}
    missing = {name: keys for name, keys in missing.items() if keys}
    if missing:
        raise ValueError(f"metrics missing from the results: {missing}")
    width = max([len(name) for name in results] + [4])
    header = f"{'':<{width}}" + "".join(f"{h:>8}" for h in METRIC_LABELS)
    rows = [
        f"{name:<{width}}" + "".join(f"{m[k]:>8.1f}" for k in METRIC_KEYS)
        for name, m in results.items()
    ]
    return "\n".join([header, *rows])


def _as_matrix(sim: Matrix) -> torch.Tensor:
    """A 2-D real tensor without NaN (numpy input shares memory where it can)."""
    if not isinstance(sim, torch.Tensor):
        array = np.asarray(sim)
        sim = torch.from_numpy(array if array.flags.writeable else array.copy())
    if sim.dim() != 2:
        raise ValueError(f"a similarity matrix must be 2-D; got shape {tuple(sim.shape)}")
    if sim.dtype == torch.bool or sim.is_complex():
        raise ValueError(f"a similarity matrix must hold real numbers; got {sim.dtype}")
    if sim.shape[0] == 0:
        raise ValueError("a similarity matrix needs at least one query row")
    if bool(torch.isnan(sim).any()):
        raise ValueError("the similarity matrix contains NaN")
    return sim.detach()


def _check_owners(
    caption_to_video: Sequence[int] | np.ndarray | torch.Tensor, sim: torch.Tensor
) -> torch.Tensor:
    """``caption_to_video`` as a long tensor on the device of ``sim``, validated."""
    owner = caption_to_video
    if not isinstance(owner, torch.Tensor):
        owner = torch.as_tensor(np.asarray(owner))
    n_captions, n_videos = sim.shape
    if owner.shape != (n_captions,) or owner.is_floating_point() or owner.dtype == torch.bool:
        raise ValueError(
            f"caption_to_video must be {n_captions} integers (one per row of sim); "
            f"got {owner.dtype} of shape {tuple(owner.shape)}"
        )
    if bool((owner < 0).any() or (owner >= n_videos).any()):
        raise ValueError(f"caption_to_video must lie in [0, {n_videos}) (the columns of sim)")
    captionless = torch.bincount(owner, minlength=n_videos).eq(0).nonzero().flatten()
    if captionless.numel():
        raise ValueError(f"videos without a caption: columns {captionless[:10].tolist()}")
    return owner.to(device=sim.device, dtype=torch.long)


def _caption_ranks(sim: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """Per caption: videos other than its own scoring at least as high as its own."""
    target = sim[torch.arange(sim.shape[0], device=sim.device), owner]
    return _count_at_least(sim, target) - 1


def _video_ranks(sim: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """Per video: captions of other videos scoring at least as high as its best caption."""
    own_scores = sim[torch.arange(sim.shape[0], device=sim.device), owner]
    best = own_scores.new_zeros(sim.shape[1])
    best = best.scatter_reduce(0, owner, own_scores, reduce="amax", include_self=False)
    own_at_least = torch.zeros_like(best, dtype=torch.long)
    own_at_least = own_at_least.scatter_add(0, owner, (own_scores >= best[owner]).long())
    return _count_at_least(sim.T, best) - own_at_least


def _video_group_ranks(sim: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """Per video: other videos whose best caption for it scores at least as high as its own
    best caption (each video's captions grouped, as CLIP4Clip does)."""
    n_videos = sim.shape[1]
    groups = owner[:, None].expand_as(sim)
    best = sim.new_zeros(n_videos, n_videos)  # [caption group, video]
    best = best.scatter_reduce(0, groups, sim, reduce="amax", include_self=False)
    video_by_group = best.T
    return _count_at_least(video_by_group, video_by_group.diagonal()) - 1


def _count_at_least(sim: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Per row ``i``: how many entries of ``sim[i]`` are ``>= thresholds[i]`` (row blocks)."""
    n_rows, n_cols = sim.shape
    block = max(1, COMPARISONS_PER_BLOCK // n_cols)
    counts = [
        (sim[start : start + block] >= thresholds[start : start + block, None]).sum(dim=1)
        for start in range(0, n_rows, block)
    ]
    return torch.cat(counts)


def _summarise(ranks: torch.Tensor) -> dict[str, float]:
    """The metric dict from 0-based ranks."""
    ranks = ranks.cpu().numpy()
    recall = {f"R{k}": float(100.0 * np.mean(ranks < k)) for k in (1, 5, 10)}
    return {**recall, "MdR": float(np.median(ranks + 1)), "MnR": float(np.mean(ranks + 1))}
