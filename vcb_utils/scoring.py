"""MeanMaxSim: the late-interaction score of Video-ColBERT.

``MMS(q, d) = mean_j max_i <q_j, d_i>`` over the valid query vectors j and valid
document vectors i. ``maxsim`` scores every query against every document in blocks,
so that the token-level similarities of only one block exist at a time.

Three tricks keep each block a single matrix product plus one cheap max:
- padded document vectors are overwritten with a copy of a valid vector of the same
  document, which leaves every max unchanged, so no mask is applied per similarity;
- the masked mean over query vectors is a weighted sum with weights ``mask / count``;
- document vectors are laid out vector-major inside a block, so the max over them is an
  elementwise max of contiguous rows.
"""

from __future__ import annotations

import torch

DEFAULT_BLOCK_ELEMENTS = 1 << 22
"""Token-level similarities materialised per block when ``chunk_size`` is None (16 MiB fp32)."""


def maxsim(
    q: torch.Tensor,
    d: torch.Tensor,
    q_mask: torch.Tensor | None = None,
    d_mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """MeanMaxSim of every query against every document.

    Args:
        q: query vectors ``[Nq, Lq, D]``.
        d: document vectors ``[Nd, Ld, D]``.
        q_mask: bool ``[Nq, Lq]``, True = the vector takes part in the mean (None = all).
        d_mask: bool ``[Nd, Ld]``, True = the vector takes part in the max (None = all).
        chunk_size: the most token-level similarities (``Lq * Ld`` per query-document pair)
            held at once; None uses ``DEFAULT_BLOCK_ELEMENTS``. Memory beyond the inputs and
            the ``[Nq, Nd]`` result is about ``4 * chunk_size`` bytes.

    Returns:
        float tensor ``[Nq, Nd]`` (float32 unless the inputs are float64).
    """
    _check_shapes(q, d, q_mask, d_mask)
    n_q, len_q, dim = q.shape
    n_d, len_d, _ = d.shape
    out_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    if n_q == 0 or n_d == 0:
        return q.new_zeros((n_q, n_d), dtype=out_dtype)

    weights = _query_weights(q_mask, n_q, len_q, q.device).to(out_dtype)
    d = _fill_padding(d, d_mask)
    budget = chunk_size or DEFAULT_BLOCK_ELEMENTS
    docs_per_block = max(1, min(n_d, budget // (len_q * len_d)))
    queries_per_block = max(1, min(n_q, budget // (len_q * len_d * docs_per_block)))

    scores = q.new_empty((n_q, n_d), dtype=out_dtype)
    for d_start in range(0, n_d, docs_per_block):
        d_block = d[d_start : d_start + docs_per_block]
        n_db = d_block.shape[0]
        # vector-major layout: the max over a document's vectors becomes an elementwise max
        # over contiguous rows, far cheaper than a reduction over a short innermost axis
        d_major = q.new_empty((len_d, n_db, dim)).copy_(d_block.transpose(0, 1))  # one copy
        d_major = d_major.view(len_d * n_db, dim)
        for q_start in range(0, n_q, queries_per_block):
            q_block = q[q_start : q_start + queries_per_block]
            n_qb = q_block.shape[0]
            sim = token_similarities(q_block.reshape(n_qb * len_q, dim), d_major)
            best = sim.view(n_qb, len_q, len_d, n_db).amax(dim=2)
            scores[q_start : q_start + n_qb, d_start : d_start + n_db] = torch.einsum(
                "qld,ql->qd", best.to(out_dtype), weights[q_start : q_start + n_qb]
            )
    return scores


def token_similarities(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``<q_j, d_i>`` for every query vector j and document vector i: ``[Lq, D], [Ld, D] ->
    [Lq, Ld]``, the matrix a MaxSim heatmap draws."""
    return q @ d.T


def token_shares(sim: torch.Tensor) -> torch.Tensor:
    """Each query vector's share of the MeanMaxSim, from token similarities ``[..., Lq, Ld]``
    of valid vectors: its best match divided by ``Lq``. The shares add up to ``maxsim``."""
    return sim.amax(dim=-1) / sim.shape[-2]


def _check_shapes(q, d, q_mask, d_mask) -> None:
    if q.dim() != 3 or d.dim() != 3:
        raise ValueError(f"q and d must be [N, L, D]; got {tuple(q.shape)} and {tuple(d.shape)}")
    if q.shape[-1] != d.shape[-1]:
        raise ValueError(f"vector sizes differ: q has {q.shape[-1]}, d has {d.shape[-1]}")
    if q_mask is not None and q_mask.shape != q.shape[:2]:
        raise ValueError(f"q_mask must be {tuple(q.shape[:2])}; got {tuple(q_mask.shape)}")
    if d_mask is not None and d_mask.shape != d.shape[:2]:
        raise ValueError(f"d_mask must be {tuple(d.shape[:2])}; got {tuple(d_mask.shape)}")


def _query_weights(q_mask, n_q: int, len_q: int, device) -> torch.Tensor:
    """``[Nq, Lq]`` weights that turn a sum over query vectors into the masked mean."""
    if q_mask is None:
        return torch.full((n_q, len_q), 1.0 / len_q, device=device)
    q_mask = q_mask.to(device=device, dtype=torch.bool)
    counts = q_mask.sum(dim=1, keepdim=True)
    if bool((counts == 0).any()):
        raise ValueError("every query needs at least one valid vector (a row of q_mask is empty)")
    return q_mask / counts


def _fill_padding(d: torch.Tensor, d_mask: torch.Tensor | None) -> torch.Tensor:
    """Replace padded vectors by the first valid vector of their document (max unchanged)."""
    if d_mask is None:
        return d
    d_mask = d_mask.to(device=d.device, dtype=torch.bool)
    if bool(d_mask.all()):
        return d
    if not bool(d_mask.any(dim=1).all()):
        raise ValueError(
            "every document needs at least one valid vector (a row of d_mask is empty)"
        )
    first_valid = d_mask.int().argmax(dim=1)
    fill = d[torch.arange(d.shape[0], device=d.device), first_valid]
    return torch.where(d_mask.unsqueeze(-1), d, fill.unsqueeze(1))
