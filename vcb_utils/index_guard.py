"""What an index refuses, as ``vcb_utils.index_guard`` (now ``vcb_utils.search.guard``)."""

from vcb_utils.search.guard import (
    check_apart_from_videos,
    check_embedding,
    check_empty_or_index,
    check_values,
    video_folders,
)

__all__ = [
    "check_apart_from_videos",
    "check_embedding",
    "check_empty_or_index",
    "check_values",
    "video_folders",
]
