"""Synthetic clips: deterministic, decodable, and every caption true of the drawn pixels."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from vcb_utils import synthetic
from vcb_utils.datasets import read_annotations
from vcb_utils.order import twin_groups
from vcb_utils.synthetic import COLOURS, SyntheticConfig
from vcb_utils.video import read_frames

TINY = SyntheticConfig(
    n_train=6,
    n_test=10,
    order_pair_fraction=0.4,
    train_order_pair_fraction=1.0,
    train_one_subject_rate=0.5,
    seed=3,
)

COLOUR = "|".join(COLOURS)
NOUN = rf"a (?P<{{0}}c>{COLOUR}) (?P<{{0}}s>circle|square|triangle)"
VERB = (
    rf"(?P<{{0}}v>moves (?P<{{0}}d>left|right|up|down)|"
    rf"appears (?P<{{0}}p>on the left|on the right|at the top|at the bottom)|disappears|"
    rf"(?:changes to|turns) (?P<{{0}}n>{COLOUR}))"
)
VARIANTS = [
    re.compile(
        rf"^{NOUN.format('a')} {VERB.format('a')}, then "
        rf"(?:it|{NOUN.format('b')}) {VERB.format('b')}$"
    ),
    re.compile(
        rf"^first {NOUN.format('a')} {VERB.format('a')} and then "
        rf"(?:the (?P<bthe>circle|square|triangle)|{NOUN.format('b')}) "
        rf"{VERB.format('b')}$"
    ),
]


def parse(text: str) -> list[dict]:
    """The two clauses of a caption: colour, shape, kind and argument (an independent grammar)."""
    match = next(m for pattern in VARIANTS if (m := pattern.match(text)))
    clauses = []
    for k in "ab":
        verb = match[f"{k}v"]
        kind = verb.split()[0].replace("turns", "changes")
        arg = match[f"{k}d"] or match[f"{k}p"] or match[f"{k}n"]
        colour, shape = match[f"{k}c"], match[f"{k}s"]
        if colour is None:  # "it" / "the <shape>": the first clause's object, as it is now
            first = clauses[0]
            colour = first["arg"] if first["kind"] == "changes" else first["colour"]
            shape = first["shape"]
            assert match.groupdict().get("bthe") in (None, shape)
        clauses.append({"colour": colour, "shape": shape, "kind": kind, "arg": arg})
    return clauses


def blobs(frame: np.ndarray) -> dict[str, dict]:
    """Per palette colour: pixel count, centroid (fractions) and fill of the bounding box."""
    palette = np.array(list(COLOURS.values()), np.float32)
    dist = np.linalg.norm(frame[:, :, None, :].astype(np.float32) - palette, axis=-1)
    label = np.where(dist.min(-1) < 60, dist.argmin(-1), -1)
    found = {}
    for i, name in enumerate(COLOURS):
        ys, xs = np.nonzero(label == i)
        if len(xs) < 30:
            continue
        box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
        size = frame.shape[0]
        found[name] = {
            "centre": ((xs.mean() + 0.5) / size, (ys.mean() + 0.5) / size),
            "fill": len(xs) / box,
        }
    return found


def shape_of(blob: dict) -> str:
    fills = {"triangle": 0.5, "circle": np.pi / 4, "square": 1.0}
    return min(fills, key=lambda s: abs(fills[s] - blob["fill"]))


def where(centre) -> str | None:
    x, y = centre
    if 0.3 <= y <= 0.7 and (x < 0.4 or x > 0.6):
        return "on the left" if x < 0.5 else "on the right"
    if 0.3 <= x <= 0.7 and (y < 0.4 or y > 0.6):
        return "at the top" if y < 0.5 else "at the bottom"
    return None


def check_clause(frames: np.ndarray, clause: dict, phase: int) -> None:
    """The clause holds between the first and the last frame of its half of the clip."""
    half = (len(frames) + 1) // 2
    first, last = (0, half - 1) if phase == 0 else (half, len(frames) - 1)
    before, after = blobs(frames[first]), blobs(frames[last])
    colour, kind = clause["colour"], clause["kind"]
    seen = before.get(colour) if kind != "appears" else after.get(colour)
    assert seen is not None and shape_of(seen) == clause["shape"], (clause, before, after)
    if kind == "appears":
        assert colour not in before and where(after[colour]["centre"]) == clause["arg"]
    elif kind == "disappears":
        assert colour not in after
    elif kind == "changes":
        new = after.get(clause["arg"])
        assert colour not in after and new is not None and shape_of(new) == clause["shape"]
        assert np.allclose(new["centre"], before[colour]["centre"], atol=0.05)
    else:
        dx, dy = np.subtract(after[colour]["centre"], before[colour]["centre"])
        along, across = {"left": (-dx, dy), "right": (dx, dy), "up": (-dy, dx), "down": (dy, dx)}[
            clause["arg"]
        ]
        assert along > 0.3 and abs(across) < 0.03, (clause, dx, dy)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("tiny"), TINY, workers=1)


def test_captions_are_true_of_the_pixels(tiny):
    rows = [json.loads(line) for line in (tiny / "clips.jsonl").read_text().splitlines()]
    specs = [(r["video"], r["split"], synthetic.ClipSpec.from_dict(r["spec"])) for r in rows]
    assert len(specs) == 16
    for video, _, spec in specs:
        frames = read_frames(tiny / video, range(spec.num_frames))
        assert frames.shape == (spec.num_frames, 96, 96, 3)
        assert 16 <= spec.num_frames <= 32
        for variant in (0, 1):
            clauses = parse(synthetic.caption(spec, variant))
            for phase, clause in enumerate(clauses):
                check_clause(frames, clause, phase)
        backwards = synthetic.played_backwards(spec)
        if backwards is not None:  # the caption of the clip played backwards is true of it too
            for phase, clause in enumerate(parse(synthetic.caption(backwards))):
                check_clause(frames[::-1], clause, phase)


def test_annotations_in_own_data_format(tiny):
    train = read_annotations("synthetic", tiny, "train")
    test = read_annotations("jsonl", tiny / "annotations.jsonl", "test")
    assert len(train) == 2 * TINY.n_train and len(test) == TINY.n_test
    assert len({r.video_id for r in train}) == TINY.n_train
    assert all(r.path.is_file() and r.path.parent == tiny / "videos" for r in train + test)
    pairs = {tuple(r.caption.split(", then ")) for r in test}
    assert any(tuple(reversed(p)) in pairs for p in pairs)  # captions differing only in order


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_deterministic_for_a_seed(tiny, tmp_path):
    again = synthetic.generate(tmp_path / "again", TINY, workers=2)
    assert _digest(again) == _digest(tiny)
    other = synthetic.make_specs(SyntheticConfig(**{**TINY.__dict__, "seed": 4}))
    assert [synthetic.caption(s) for s in other["test"]] != [
        json.loads(line)["caption"]
        for line in (tiny / "annotations.jsonl").read_text().splitlines()
        if json.loads(line)["split"] == "test"
    ]


def test_default_sizes_and_order_pairs():
    specs = synthetic.make_specs(SyntheticConfig())
    assert len(specs["train"]) == 1000 and len(specs["test"]) == 100
    captions = [synthetic.caption(s) for s in specs["test"]]
    assert len(set(captions)) == 100
    halves = {tuple(c.split(", then ")) for c in captions}
    swapped = [h for h in halves if len(h) == 2 and (h[1], h[0]) in halves]
    assert len(swapped) >= 20  # at least 10 pairs, counted from both sides
    kinds = {e.kind for s in specs["train"] for e in s.events}
    assert kinds == {"moves", "appears", "disappears", "changes"}


def test_default_dataset_has_the_documented_size(tmp_path):
    folder = synthetic.ensure_synthetic(tmp_path, workers=2)
    assert folder.parent == tmp_path and (folder / "annotations.jsonl").is_file()
    assert len(read_annotations("synthetic", folder, "test")) == 100
    assert len(read_annotations("synthetic", folder, "train")) == 2000  # 2 wordings per clip


def test_ensure_synthetic_reuses_and_cleans_up(tmp_path, monkeypatch):
    folder = synthetic.ensure_synthetic(tmp_path, TINY, workers=1)

    def fail(*args, **kwargs):
        raise RuntimeError("generation should not run again")

    monkeypatch.setattr(synthetic, "generate", fail)
    assert synthetic.ensure_synthetic(tmp_path, TINY) == folder
    other = SyntheticConfig(**{**TINY.__dict__, "n_test": 4})
    with pytest.raises(RuntimeError, match="should not run"):
        synthetic.ensure_synthetic(tmp_path, other)
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_default_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VCB_DATA_DIR", str(tmp_path))
    assert synthetic.default_root() == tmp_path / "synthetic"
    monkeypatch.delenv("VCB_DATA_DIR")
    assert synthetic.default_root() == Path(synthetic.__file__).resolve().parents[1] / "data" / (
        "synthetic"
    )


def test_training_twins_include_one_subject_clips_and_are_grouped(tiny):
    records = read_annotations("synthetic", tiny, "train")
    groups = twin_groups([r.path for r in records], [r.caption for r in records])
    assert len(groups) == 3 * 2  # 3 twin clip pairs, each in both wordings
    one_subject = 0
    for i, j in groups:
        a, b = parse(records[i].caption), parse(records[j].caption)
        assert [(c["shape"], c["kind"], c["arg"]) for c in a] == [
            (c["shape"], c["kind"], c["arg"]) for c in b[::-1]
        ]
        assert records[i].caption.startswith("first") == records[j].caption.startswith("first")
        one_subject += a[0]["shape"] == a[1]["shape"] and ", then it " in records[j].caption
    assert 0 < one_subject < len(groups)  # the pixel test above covers both kinds of twins


def test_played_backwards_undoes_each_event_in_the_other_order():
    spec = synthetic.ClipSpec(
        colours=("red", "blue"),
        shapes=("circle", "square"),
        starts=((0.7, 0.2), (0.2, 0.5)),
        events=(
            synthetic.Event("moves", 0, direction="left"),
            synthetic.Event("changes", 1, colour="green"),
        ),
        num_frames=16,
        fps=8,
        size=96,
    )
    backwards = synthetic.caption(synthetic.played_backwards(spec))
    assert backwards == "a green square changes to blue, then a red circle moves right"
    gone = dataclasses.replace(
        spec, events=(synthetic.Event("disappears", 0), spec.events[1]), starts=((0.3, 0.3),) * 2
    )
    assert synthetic.played_backwards(gone) is None  # (0.3, 0.3) is no named position
