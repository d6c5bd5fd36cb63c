"""The index's files, as ``vcb_utils.index_store`` (now ``vcb_utils.search.store`` and
``vcb_utils.search.catalogue``)."""

from vcb_utils.search.catalogue import CATALOGUE_GRACE, Catalogue
from vcb_utils.search.store import FORMAT, POINTER_FILE, READABLE_VERSIONS, VERSION, Manifest

__all__ = [
    "CATALOGUE_GRACE",
    "FORMAT",
    "POINTER_FILE",
    "READABLE_VERSIONS",
    "VERSION",
    "Catalogue",
    "Manifest",
]
