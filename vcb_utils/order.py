"""Does a model see the order of events? Two pair tests on the synthetic clips, per branch.

- **Caption twins**: every clip against its own caption and the same caption with the two
  events swapped (``synthetic.twin_caption``); a pair is won when the true caption scores
  higher.
- **Reversed clips**: every caption against its clip and the same real frames played
  backwards; a pair is won when the forward clip scores higher. F (a set of frames) ties.

Pair accuracy is the share of pairs won (ties are counted apart and are not wins), printed with
its 95% Wilson interval::

    python -m vcb_utils.order outputs/tiny/best            # the synthetic test split
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from vcb_utils import synthetic
from vcb_utils.config import Config, DataConfig
from vcb_utils.datasets import VideoTextDataset
from vcb_utils.encode import default_accelerator, encode_captions, encode_videos
from vcb_utils.evaluate import load_eval_set
from vcb_utils.model import Scores, VideoColBERT, load_checkpoint

Z_95 = 1.959963984540054
"""The two-sided 95% quantile of the standard normal."""
TIE_TOLERANCE = 1e-6
"""Score gaps within this are ties (F's forward and backward scores differ by rounding only)."""


def wilson(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` (95% by default)."""
    if not 0 <= successes <= n or n == 0:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes} of {n}")
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class PairCounts:
    """Outcomes of n pairs: wins (the right side scores higher), ties, and losses."""

    wins: int
    ties: int
    n: int

    @classmethod
    def from_gaps(cls, gaps: torch.Tensor, tolerance: float = TIE_TOLERANCE) -> PairCounts:
        """Counts of ``gaps`` = right score - wrong score, one per pair."""
        ties = int((gaps.abs() <= tolerance).sum())
        return cls(int((gaps > tolerance).sum()), ties, len(gaps))

    @property
    def accuracy(self) -> float:
        return self.wins / self.n

    @property
    def tie_share(self) -> float:
        return self.ties / self.n


OrderReport = dict[str, dict[str, PairCounts]]
"""``{test: {branch: counts}}``; tests ``twins``, ``one-subject twins``, ``reversed``."""


def branch_scores(scores: Scores) -> dict[str, torch.Tensor]:
    """The F, V and both (F + V) matrices of a ``model.score`` result (the branches it has)."""
    named = {"both": scores.total, "F": scores.F, "V": scores.V}
    if scores.F is None or scores.V is None:
        named.pop("both")
    return {name: s.float().cpu() for name, s in named.items() if s is not None}


def order_gaps(
    true_scores: dict[str, torch.Tensor], other_scores: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Per branch, the right minus the wrong score of each pair."""
    return {name: true_scores[name] - other_scores[name] for name in true_scores}


def reverse_frames(video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A clip's real frames in reverse order (``[T, ...]``, the padding stays at the end)."""
    return torch.cat([video[mask].flip(0), video[~mask]])


class ReversedClips(Dataset):
    """The ``(video, mask)`` items of ``clips`` with their real frames played backwards."""

    def __init__(self, clips: Dataset) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        video, mask = self.clips[index]
        return reverse_frames(video, mask.bool()), mask


class WithBackwards(Dataset):
    """Training pairs, then for each ``(index, caption)`` of ``backwards`` that item's clip
    played backwards with ``caption`` (the caption of the backward clip)."""

    def __init__(self, pairs: VideoTextDataset, backwards: Sequence[tuple[int, str]]) -> None:
        self.pairs, self.backwards = pairs, list(backwards)

    def __len__(self) -> int:
        return len(self.pairs) + len(self.backwards)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        if index < len(self.pairs):
            return self.pairs[index]
        source, text = self.backwards[index - len(self.pairs)]
        _, _, video, video_mask = self.pairs[source]
        ids, mask = self.pairs.tokenize([text])
        return ids[0], mask[0], reverse_frames(video, video_mask.bool()), video_mask


def twin_groups(videos: Sequence[str | os.PathLike], captions: Sequence[str]) -> list[list[int]]:
    """Pairs of items ``(videos[i], captions[i])`` that are order twins: the other item's caption
    is this one's with the two events swapped, in the same wording (``twin_caption``)."""
    by_caption: dict[str, list[int]] = {}
    for i, text in enumerate(captions):
        by_caption.setdefault(text, []).append(i)
    paired: set[int] = set()
    groups = []
    for i, (spec, text) in enumerate(zip(synthetic.specs_for(videos), captions, strict=True)):
        variant = next((v for v in (0, 1) if synthetic.caption(spec, v) == text), None)
        if i in paired or variant is None:
            continue
        twins = by_caption.get(synthetic.twin_caption(spec, variant), [])
        partner = next((j for j in twins if j != i and j not in paired), None)
        if partner is not None:
            groups.append([i, partner])
            paired.update((i, partner))
    return groups


def order_training_set(
    pairs: VideoTextDataset, cfg: DataConfig, seed: int = 0
) -> tuple[Dataset, list[list[int]]]:
    """The synthetic training set with ``cfg.backward_share`` of its captions also played
    backwards, and the groups to batch together: order twins (``cfg.twin_batches``) and each
    caption with its backward clip."""
    records = pairs.records
    videos, captions = [r.path for r in records], [r.caption for r in records]
    groups = twin_groups(videos, captions) if cfg.twin_batches else []
    backwards = []
    for i, (spec, text) in enumerate(zip(synthetic.specs_for(videos), captions, strict=True)):
        variant = next((v for v in (0, 1) if synthetic.caption(spec, v) == text), None)
        back = synthetic.played_backwards(spec)
        if variant is not None and back is not None:
            backwards.append((i, synthetic.caption(back, variant)))
    chosen = np.random.default_rng(seed).permutation(len(backwards))
    backwards = [backwards[k] for k in sorted(chosen[: round(cfg.backward_share * len(records))])]
    group_of = {i: group for group in groups for i in group}
    for k, (i, _) in enumerate(backwards):
        if i not in group_of:
            group_of[i] = [i]
            groups.append(group_of[i])
        group_of[i].append(len(records) + k)
    return (WithBackwards(pairs, backwards) if backwards else pairs), groups


def order_report(model: VideoColBERT, config: Config, split: str = "test") -> OrderReport:
    """Caption-twin and reversed-clip pair counts of every branch on a synthetic split."""
    if config.data.datatype != "synthetic":
        raise ValueError(f"the order tests need the synthetic clips, not {config.data.datatype!r}")
    accelerator = default_accelerator()
    model.to(accelerator.device).eval()
    eval_set = load_eval_set(model, config, split, accelerator)
    specs = synthetic.specs_for([video.path for video in eval_set.videos])
    batch, workers = config.train.batch_size_val, config.data.workers
    forwards = encode_videos(model, eval_set.video_dataset, batch, accelerator, workers)
    backwards = encode_videos(
        model, ReversedClips(eval_set.video_dataset), batch, accelerator, workers
    )
    captions = [synthetic.caption(s) for s in specs] + [synthetic.twin_caption(s) for s in specs]
    texts = encode_captions(model, captions, batch, accelerator)
    n = len(specs)
    own = torch.arange(n)
    with torch.no_grad():
        ahead = branch_scores(model.score(texts, forwards))
        behind = branch_scores(model.score(texts, backwards))
    true = {name: s[own, own] for name, s in ahead.items()}
    twin = {name: s[own + n, own] for name, s in ahead.items()}
    reversed_ = {name: s[own, own] for name, s in behind.items()}
    twin_gaps, reversed_gaps = order_gaps(true, twin), order_gaps(true, reversed_)
    one_subject = torch.tensor([s.events[0].subject == s.events[1].subject for s in specs])
    groups = {
        "twins": twin_gaps,
        "one-subject twins": {name: gap[one_subject] for name, gap in twin_gaps.items()},
        "reversed": reversed_gaps,
    }
    return {
        test: {name: PairCounts.from_gaps(gap) for name, gap in gaps.items()}
        for test, gaps in groups.items()
    }


def format_report(report: OrderReport) -> str:
    """One row per test and branch: pairs, wins, ties, accuracy and tie share with intervals."""
    lines = [
        f"{'test':<19}{'branch':<7}{'pairs':>6}{'wins':>6}{'ties':>6}"
        f"{'accuracy':>10}  {'95% interval':<14}{'tie share':>10}  95% interval"
    ]
    for test, branches in report.items():
        for name, c in branches.items():
            win_low, win_high = wilson(c.wins, c.n)
            tie_low, tie_high = wilson(c.ties, c.n)
            lines.append(
                f"{test:<19}{name:<7}{c.n:>6}{c.wins:>6}{c.ties:>6}{c.accuracy:>10.2f}  "
                f"[{win_low:.2f}, {win_high:.2f}]  {c.tie_share:>10.2f}  "
                f"[{tie_low:.2f}, {tie_high:.2f}]"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vcb_utils.order", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("checkpoint", help="a Video-ColBERT checkpoint folder (e.g. best/)")
    parser.add_argument("--split", default="test", help="synthetic split (default: test)")
    parser.add_argument(
        "--anno_path", help="a generated synthetic folder (default: the checkpoint's data)"
    )
    args = parser.parse_args(argv)
    model, config = load_checkpoint(args.checkpoint)
    if args.anno_path:
        config = config.updated(data={"anno_path": args.anno_path})
    report = order_report(model, config, args.split)
    data = config.data.anno_path or "the default synthetic clips"
    print(f"order tests: {args.checkpoint} on {data}, {args.split} split")
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
