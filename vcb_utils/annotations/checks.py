"""Finding missing, empty or corrupt videos before any work starts."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from vcb_utils.video import VideoReadError, VideoRef, probe

logger = logging.getLogger(__name__)


def check_videos(
    videos: Sequence[VideoRef],
    on_error: str = "raise",
    *,
    source: str = "",
    workers: int = 2,
    open_files: bool | None = None,
) -> dict[str, str]:
    """Problems with the videos, before any training: path -> reason.

    Every file must exist and not be empty; with ``open_files`` (default: with ``skip`` only)
    each is also opened (header only) to find corrupt ones. ``raise``: one error listing every
    problem. ``skip``: each problem is logged once, with a summary.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    unique = list(dict.fromkeys(v.path for v in videos))
    check = _open_problem if (on_error == "skip" if open_files is None else open_files) else None
    if check is None:
        problems = {str(p): why for p in unique if (why := _file_problem(Path(p)))}
    else:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            found = list(
                tqdm(
                    pool.map(check, unique),
                    total=len(unique),
                    unit="video",
                    desc="checking videos",
                    disable=len(unique) < 100,
                )
            )
        problems = {str(p): why for p, why in zip(unique, found, strict=True) if why}
    if problems and on_error == "raise":
        raise FileNotFoundError(_problem_summary(problems, len(unique), source))
    for path, why in problems.items():
        logger.warning("skipping video %s: %s", path, why)
    if problems:
        logger.warning(_problem_summary(problems, len(unique), source))
    return problems


def _file_problem(path: Path) -> str | None:
    if not path.is_file():
        return "file not found"
    return "empty file (0 bytes)" if path.stat().st_size == 0 else None


def _open_problem(path: Path) -> str | None:
    try:
        probe(path, backend="pyav")
    except VideoReadError as err:
        return err.cause or str(err)
    return None


def _problem_summary(problems: dict[str, str], total: int, source: str) -> str:
    reasons: dict[str, int] = defaultdict(int)
    for why in problems.values():
        reasons[why.split(" (")[0]] += 1
    counts = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
    first = ", ".join(list(problems)[:5])
    where = f" referenced by {source}" if source else ""
    return f"{len(problems)} of {total} videos{where} are unusable ({counts}); first: {first}"
