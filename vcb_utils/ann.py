"""The IVF-PQ fast-scan candidate engine, as ``vcb_utils.ann`` (now ``vcb_utils.search.ivfpq``)."""

from vcb_utils.search.collection import branch_columns, segment_ids, vector_ids
from vcb_utils.search.engine import faiss_threads
from vcb_utils.search.ivfpq import (
    TRAIN_POINTS_PER_LIST,
    SearchSettings,
    approximate_scores,
    default_nlist,
    default_settings,
    merge_duplicates,
)
from vcb_utils.search.ivfpq import IvfPqEngine as CandidateIndex

__all__ = [
    "TRAIN_POINTS_PER_LIST",
    "CandidateIndex",
    "SearchSettings",
    "approximate_scores",
    "branch_columns",
    "default_nlist",
    "default_settings",
    "faiss_threads",
    "merge_duplicates",
    "segment_ids",
    "vector_ids",
]
