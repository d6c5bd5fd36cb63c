"""The score branches by one name each: ``F`` (MMS over the frame vectors), ``V`` (MMS over the
contextualised video vectors) and ``both`` (their sum, the retrieval score).

``spatial`` and ``temporal`` are old names of F and V, still accepted where a user types a name
(``config.VALUE_ALIASES``).
"""

from __future__ import annotations

from vcb_utils.config import VALUE_ALIASES

BRANCHES = ("both", "F", "V")
"""Rank by MMS_F + MMS_V, by MMS_F, or by MMS_V."""
COLOURS = {"both": "tab:green", "F": "tab:blue", "V": "tab:orange"}
"""One matplotlib colour per branch, the same in every figure of the repository."""


def branches_of(mode: str) -> tuple[str, ...]:
    """The rankings a model (or an index) of ``ModelConfig.mode`` offers."""
    mode = VALUE_ALIASES["mode"].get(mode, mode)
    if mode not in BRANCHES:
        raise ValueError(f"a {mode!r} model has no MaxSim branches (modes: {BRANCHES})")
    return BRANCHES if mode == "both" else (mode,)


def branch_name(name: str) -> str:
    """A branch by its name (or an old name); ValueError for anything else."""
    name = VALUE_ALIASES["mode"].get(name, name)
    if name not in BRANCHES:
        raise ValueError(f"branch must be one of {BRANCHES}, not {name!r}")
    return name
