"""The search wing: a collection of encoded videos, saved, searched exactly or in two stages.

One module per job:

- ``index``: ``VideoIndex``, the front that the rest of the library and users call;
- ``collection``: ids, paths, captions and the stored vectors (``Collection``, ``Part``);
- ``persistence``: what a save writes and a load reads; the files themselves are ``store``'s
  (pointer, manifests, segments, codes), ``catalogue``'s (LanceDB), ``cleanup``'s (deleting
  only what a save wrote) and ``guard``'s (what a save refuses);
- ``stage`` and ``engine``: the candidate stage, a trained engine over the collection
  (``rescored``, the default, which rescores its candidates in RAM and reads few;
  ``meanquery``, the previous default; or ``ivfpq``, that of older indexes); a new engine is
  one module named in ``engine.ENGINES``; ``calibration``: its measured recall and the
  settings chosen;
- ``searcher`` (exact scan, two stages) and ``hits`` (results and heatmap data);
- ``encoding``, ``build`` (resumable multi-process indexing) and ``cli`` (the command line).

``vcb_utils.index``, ``index_build``, ``index_cli``, ``index_store``, ``index_cleanup``,
``index_guard`` and ``ann`` re-export the names they used to hold.
"""
