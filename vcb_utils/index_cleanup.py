"""What a save deletes, as ``vcb_utils.index_cleanup`` (now ``vcb_utils.search.cleanup``)."""

from vcb_utils.search.cleanup import JOURNAL_FILE, Journal, finish_interrupted

__all__ = ["JOURNAL_FILE", "Journal", "finish_interrupted"]
