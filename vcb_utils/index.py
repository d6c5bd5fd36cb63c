"""The video index, as ``vcb_utils.index`` (its home is the package ``vcb_utils.search``)."""

from vcb_utils.branches import BRANCHES
from vcb_utils.search.collection import FIELDS, VECTOR_FIELDS
from vcb_utils.search.hits import PAD_TOKEN, Branch, Hit, QueryResult, token_labels
from vcb_utils.search.index import VideoIndex
from vcb_utils.search.searcher import DEFAULT_BLOCK_VIDEOS, SEARCH_THREADS
from vcb_utils.search.stage import ANN_MIN_VIDEOS

__all__ = [
    "ANN_MIN_VIDEOS",
    "BRANCHES",
    "DEFAULT_BLOCK_VIDEOS",
    "FIELDS",
    "PAD_TOKEN",
    "SEARCH_THREADS",
    "VECTOR_FIELDS",
    "Branch",
    "Hit",
    "QueryResult",
    "VideoIndex",
    "token_labels",
]
