"""The resumable multi-process build (now ``vcb_utils.search.build``), as it was imported."""

from vcb_utils.search.build import (
    SHARD_SIZE,
    VideoList,
    build_folder,
    index_videos,
    is_index,
    videos_in_csv,
    videos_in_folder,
)

__all__ = [
    "SHARD_SIZE",
    "VideoList",
    "build_folder",
    "index_videos",
    "is_index",
    "videos_in_csv",
    "videos_in_folder",
]
