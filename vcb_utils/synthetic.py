"""Procedural text-video clips: coloured shapes that move, appear, disappear and change colour.

Every clip has two events, one in each half ("a red circle moves left, then a blue square
appears at the top"), so a caption depends on what is seen (colour, shape), where
(left/right/top/bottom) and in what order; some clips come in pairs whose captions differ only
in the order of the two events. Clips are real mp4 files (H.264 via PyAV) with annotations in
the own-data JSONL format (``video``, ``caption``, ``split``), deterministic for a seed, and
cached under ``data/synthetic/`` so that they are generated once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import shutil
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""Bump when the drawing or the captions change, so that cached folders are regenerated."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "white": (240, 240, 240),
}
BACKGROUND = (25, 25, 25)
SHAPES = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
POSITIONS: dict[str, tuple[float, float]] = {
    "on the left": (0.2, 0.5),
    "on the right": (0.8, 0.5),
    "at the top": (0.5, 0.2),
    "at the bottom": (0.5, 0.8),
}
KINDS = ("moves", "appears", "disappears", "changes")
ONE_SUBJECT_RATE = 0.25
"""Chance that both events of a test clip concern one object (not when the first disappears)."""
REORDERABLE = frozenset({"moves", "changes"})
"""Kinds whose two events on one object stay visible in either order: such clips get twins."""
PHASES = ((0.0, 0.5), (0.5, 1.0))
"""Event k happens in ``PHASES[k]`` (fractions of the clip): a move spans the phase, the other
kinds happen at ``EVENT_OFFSET`` into it."""
EVENT_OFFSET = 0.2
SHAPE_SIZE = 0.3
"""Shape width as a fraction of the frame side."""
MOVE_DISTANCE = 0.45
"""How far a move goes, as a fraction of the frame side."""
MARGIN = 0.16
"""Shape centres stay at least this far from the frame border."""


@dataclass(frozen=True)
class Event:
    """One thing that happens to object ``subject`` (an index into the clip's objects)."""

    kind: str
    subject: int
    direction: str | None = None
    """For ``moves``: a key of ``DIRECTIONS``."""
    position: str | None = None
    """For ``appears``: a key of ``POSITIONS``."""
    colour: str | None = None
    """For ``changes``: the new colour."""


@dataclass(frozen=True)
class ObjectState:
    visible: bool
    colour: str
    centre: tuple[float, float]
    """(x, y) as fractions of the frame side, y downwards."""


@dataclass(frozen=True)
class ClipSpec:
    """The structured description of a clip: what is drawn, and what the caption says."""

    colours: tuple[str, ...]
    shapes: tuple[str, ...]
    starts: tuple[tuple[float, float], ...]
    """Centre of each object at the start (or where it appears)."""
    events: tuple[Event, Event]
    num_frames: int
    fps: int
    size: int

    def event_time(self, k: int) -> float:
        """When the instantaneous event ``k`` happens (fraction of the clip)."""
        start, stop = PHASES[k]
        return start + EVENT_OFFSET * (stop - start)

    def state(self, obj: int, u: float) -> ObjectState:
        """Object ``obj`` at time ``u`` (fraction of the clip, frame i is at ``i / num_frames``)."""
        own = [(k, e) for k, e in enumerate(self.events) if e.subject == obj]
        visible = not own or own[0][1].kind != "appears"
        colour, (x, y) = self.colours[obj], self.starts[obj]
        for k, event in own:
            happened = u >= self.event_time(k)
            if event.kind == "appears" and happened:
                visible = True
            elif event.kind == "disappears" and happened:
                visible = False
            elif event.kind == "changes" and happened:
                colour = event.colour
            elif event.kind == "moves":
                start, stop = PHASES[k]
                progress = min(max((u - start) / (stop - start), 0.0), 1.0)
                dx, dy = DIRECTIONS[event.direction]
                x, y = x + dx * MOVE_DISTANCE * progress, y + dy * MOVE_DISTANCE * progress
        return ObjectState(visible, colour, (x, y))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> ClipSpec:
        return cls(
            colours=tuple(raw["colours"]),
            shapes=tuple(raw["shapes"]),
            starts=tuple(tuple(s) for s in raw["starts"]),
            events=tuple(Event(**e) for e in raw["events"]),
            num_frames=raw["num_frames"],
            fps=raw["fps"],
            size=raw["size"],
        )


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and content of a synthetic dataset (the defaults feed the tiny main job)."""

    n_train: int = 1000
    n_test: int = 100
    size: int = 96
    fps: int = 8
    min_seconds: float = 2.0
    max_seconds: float = 4.0
    train_captions: int = 2
    """Caption variants per training clip (1 or 2); test clips get one caption."""
    order_pair_fraction: float = 0.2
    """Share of test clips that come as pairs with the two events in swapped order."""
    train_order_pair_fraction: float = 0.2
    """The same share among training clips, where one-subject clips whose events are moves or
    colour changes pair too ("it moves down, then it changes to yellow" and the other order)."""
    train_one_subject_rate: float = ONE_SUBJECT_RATE
    """Chance that both events of a training clip concern one object (test clips: 0.25)."""
    seed: int = 0

    def tag(self) -> str:
        """A folder name that changes whenever the content would."""
        raw = json.dumps([FORMAT_VERSION, dataclasses.asdict(self)], sort_keys=True)
        digest = hashlib.sha1(raw.encode()).hexdigest()[:8]
        return f"seed{self.seed}-{self.n_train}x{self.n_test}-{self.size}px-{digest}"


# ---------------------------------------------------------------- captions


def caption(spec: ClipSpec, variant: int = 0) -> str:
    """The caption of a clip; variant 1 words it differently ("first ... and then the ...")."""
    first, second = spec.events
    head = f"{_noun(spec, first, 0)} {_verb(first, variant)}"
    if second.subject == first.subject:
        subject = "it" if variant == 0 else f"the {spec.shapes[second.subject]}"
    else:
        subject = _noun(spec, second, 1)
    tail = f"{subject} {_verb(second, variant)}"
    return f"{head}, then {tail}" if variant == 0 else f"first {head} and then {tail}"


def twin_spec(spec: ClipSpec) -> ClipSpec:
    """The same clip description with its two events in the other order (the caption twin's)."""
    return dataclasses.replace(spec, events=spec.events[::-1])


def twin_caption(spec: ClipSpec, variant: int = 0) -> str:
    """The caption with the two events swapped: "A, then B" -> "B, then A"; a one-subject
    caption keeps its subject first ("a red square changes to yellow, then it moves down")."""
    return caption(twin_spec(spec), variant)


def played_backwards(spec: ClipSpec) -> ClipSpec | None:
    """The description of a clip played backwards: the events in the other order, each undone
    (a move the other way, appears and disappears exchanged, a colour change back), the objects
    as they end. None when an object disappears away from a named position (``POSITIONS``):
    backwards it appears there, which no caption can say."""
    events = []
    for k in (1, 0):
        event = spec.events[k]
        before = spec.state(event.subject, spec.event_time(k) - 1e-6)
        if event.kind == "moves":
            events.append(dataclasses.replace(event, direction=OPPOSITE[event.direction]))
        elif event.kind == "changes":
            events.append(dataclasses.replace(event, colour=before.colour))
        elif event.kind == "appears":
            events.append(Event("disappears", event.subject))
        elif region(before.centre) is None:
            return None
        else:
            events.append(Event("appears", event.subject, position=region(before.centre)))
    end = [spec.state(obj, 1.0) for obj in range(len(spec.colours))]
    return dataclasses.replace(
        spec,
        colours=tuple(s.colour for s in end),
        starts=tuple(s.centre for s in end),
        events=tuple(events),
    )


def _noun(spec: ClipSpec, event: Event, k: int) -> str:
    before = spec.event_time(k) - 1e-6 if event.kind != "moves" else PHASES[k][0]
    colour = spec.state(event.subject, before).colour
    return f"a {colour} {spec.shapes[event.subject]}"


def _verb(event: Event, variant: int) -> str:
    if event.kind == "moves":
        return f"moves {event.direction}"
    if event.kind == "appears":
        return f"appears {event.position}"
    if event.kind == "changes":
        return f"{'changes to' if variant == 0 else 'turns'} {event.colour}"
    return "disappears"


# ---------------------------------------------------------------- sampling


def sample_spec(
    rng: np.random.Generator, cfg: SyntheticConfig, one_subject_rate: float = ONE_SUBJECT_RATE
) -> ClipSpec:
    """A random valid clip: shapes inside the frame and never overlapping."""
    while True:
        events, colours, shapes = _draw_events(rng, one_subject_rate)
        num_frames = _draw_length(rng, cfg)
        for _ in range(20):
            spec = _place(rng, cfg, events, colours, shapes, num_frames)
            if spec is not None:
                return spec


def swapped(
    rng: np.random.Generator, cfg: SyntheticConfig, spec: ClipSpec, one_subject: bool = False
) -> ClipSpec | None:
    """The same two events in the other order, or None: when both concern one object, unless
    ``one_subject`` and both are ``REORDERABLE``."""
    first, second = spec.events
    if first.subject == second.subject:
        if not one_subject or {first.kind, second.kind} - REORDERABLE:
            return None
        events, colours, shapes = (second, first), spec.colours, spec.shapes
    else:
        events = (dataclasses.replace(second, subject=0), dataclasses.replace(first, subject=1))
        colours, shapes = spec.colours[::-1], spec.shapes[::-1]
    for _ in range(20):
        placed = _place(rng, cfg, events, colours, shapes, spec.num_frames)
        if placed is not None:
            return placed
    return None


def _draw_length(rng: np.random.Generator, cfg: SyntheticConfig) -> int:
    return int(round(rng.uniform(cfg.min_seconds, cfg.max_seconds) * cfg.fps))


def _draw_events(
    rng: np.random.Generator, one_subject_rate: float
) -> tuple[tuple[Event, Event], tuple, tuple]:
    palette = [str(c) for c in rng.permutation(list(COLOURS))]
    first_kind = str(rng.choice(KINDS))
    same = first_kind != "disappears" and rng.random() < one_subject_rate
    second_kinds = [k for k in KINDS if k != "appears"] if same else list(KINDS)
    second_kind = str(rng.choice(second_kinds))
    count = 1 if same else 2
    colours, spare = tuple(palette[:count]), palette[count:]
    shapes = tuple(str(s) for s in rng.choice(SHAPES, size=count))
    events = (
        _event(rng, first_kind, 0, spare[0]),
        _event(rng, second_kind, 0 if same else 1, spare[1]),
    )
    return events, colours, shapes


def _event(rng: np.random.Generator, kind: str, subject: int, new_colour: str) -> Event:
    if kind == "moves":
        return Event(kind, subject, direction=str(rng.choice(list(DIRECTIONS))))
    if kind == "appears":
        return Event(kind, subject, position=str(rng.choice(list(POSITIONS))))
    if kind == "changes":
        return Event(kind, subject, colour=new_colour)
    return Event(kind, subject)


def _place(
    rng: np.random.Generator,
    cfg: SyntheticConfig,
    events: tuple[Event, Event],
    colours: tuple[str, ...],
    shapes: tuple[str, ...],
    num_frames: int,
) -> ClipSpec | None:
    """Starting points for the objects, or None when the drawn clip would be invalid."""
    starts = tuple(_start(rng, events, obj) for obj in range(len(colours)))
    spec = ClipSpec(colours, shapes, starts, events, num_frames, cfg.fps, cfg.size)
    return spec if _valid(spec) else None


def _start(rng: np.random.Generator, events: Sequence[Event], obj: int) -> tuple[float, float]:
    first = next(e for e in events if e.subject == obj)
    if first.kind == "appears":
        x, y = POSITIONS[first.position]
        return x + rng.uniform(-0.04, 0.04), y + rng.uniform(-0.04, 0.04)
    x, y = rng.uniform(MARGIN, 1 - MARGIN, size=2)
    if first.kind == "moves":
        dx, dy = DIRECTIONS[first.direction]
        centre = 0.5 + rng.uniform(-0.05, 0.05)
        x = centre - dx * MOVE_DISTANCE / 2 if dx else x
        y = centre - dy * MOVE_DISTANCE / 2 if dy else y
    return float(x), float(y)


def _valid(spec: ClipSpec) -> bool:
    """Inside the frame, and visible shapes at least one shape apart (no overlap)."""
    for i in range(spec.num_frames):
        states = [s for s in _states(spec, i / spec.num_frames) if s.visible]
        for s in states:
            if not all(MARGIN - 1e-9 <= c <= 1 - MARGIN + 1e-9 for c in s.centre):
                return False
        for a, b in itertools.combinations(states, 2):
            gap = max(abs(a.centre[0] - b.centre[0]), abs(a.centre[1] - b.centre[1]))
            if gap < SHAPE_SIZE * 1.2:
                return False
    return _positions_hold(spec)


def _positions_hold(spec: ClipSpec) -> bool:
    """An object that appears at a named position stays in that region until the next event."""
    for k, event in enumerate(spec.events):
        if event.kind == "appears":
            centre = spec.state(event.subject, spec.event_time(k)).centre
            if region(centre) != event.position:
                return False
    return True


def region(centre: tuple[float, float]) -> str | None:
    """The named position (a key of ``POSITIONS``) that a centre lies in, if any."""
    x, y = centre
    if 0.35 <= y <= 0.65:
        return "on the left" if x < 0.35 else "on the right" if x > 0.65 else None
    if 0.35 <= x <= 0.65:
        return "at the top" if y < 0.35 else "at the bottom" if y > 0.65 else None
    return None


def _states(spec: ClipSpec, u: float) -> list[ObjectState]:
    return [spec.state(obj, u) for obj in range(len(spec.colours))]


def make_specs(cfg: SyntheticConfig) -> dict[str, list[ClipSpec]]:
    """The clips of both splits (train and test use separate random streams)."""
    train = SplitMix(cfg.train_order_pair_fraction, cfg.train_one_subject_rate, True, False)
    test = SplitMix(cfg.order_pair_fraction, ONE_SUBJECT_RATE, False, True)
    return {
        "train": _split_specs(np.random.default_rng([cfg.seed, 0]), cfg, cfg.n_train, train),
        "test": _split_specs(np.random.default_rng([cfg.seed, 1]), cfg, cfg.n_test, test),
    }


@dataclass(frozen=True)
class SplitMix:
    """What a split is made of: order pairs (one-subject ones too?), one-subject clips, and
    whether captions must be unique."""

    pair_fraction: float
    one_subject_rate: float
    one_subject_pairs: bool
    unique: bool


def _split_specs(
    rng: np.random.Generator, cfg: SyntheticConfig, count: int, mix: SplitMix
) -> list[ClipSpec]:
    """``count`` clips, a share of them as order-swapped pairs; unique captions when asked."""
    specs: list[ClipSpec] = []
    seen: set[str] = set()
    pairs_left = int(count * mix.pair_fraction) // 2
    while len(specs) < count:
        batch = [sample_spec(rng, cfg, mix.one_subject_rate)]
        if pairs_left and len(specs) + 2 <= count:
            partner = swapped(rng, cfg, batch[0], mix.one_subject_pairs)
            if partner is None:
                continue
            batch.append(partner)
        texts = [caption(s) for s in batch]
        if mix.unique and (seen.intersection(texts) or len(set(texts)) < len(texts)):
            continue
        pairs_left -= len(batch) == 2
        seen.update(texts)
        specs.extend(batch)
    return specs


# ---------------------------------------------------------------- drawing and writing


def render_clip(spec: ClipSpec) -> np.ndarray:
    """The frames of a clip, uint8 RGB ``[num_frames, size, size, 3]``."""
    grid = (np.mgrid[0 : spec.size, 0 : spec.size] + 0.5) / spec.size
    frames = np.empty((spec.num_frames, spec.size, spec.size, 3), np.uint8)
    for i in range(spec.num_frames):
        frame = frames[i]
        frame[:] = BACKGROUND
        for obj, state in enumerate(_states(spec, i / spec.num_frames)):
            if state.visible:
                frame[shape_mask(spec.shapes[obj], state.centre, grid)] = COLOURS[state.colour]
    return frames


def shape_mask(shape: str, centre: tuple[float, float], grid: np.ndarray) -> np.ndarray:
    """Pixels covered by a shape of width ``SHAPE_SIZE`` centred at ``centre``."""
    dy, dx = grid[0] - centre[1], grid[1] - centre[0]
    half = SHAPE_SIZE / 2
    if shape == "circle":
        return dx**2 + dy**2 <= half**2
    if shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    depth = dy + half  # triangle pointing up: width grows from the apex down to the base
    return (depth >= 0) & (depth <= 2 * half) & (np.abs(dx) <= depth / 2)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, crf: int = 18) -> None:
    """Write uint8 RGB frames ``[T, H, W, 3]`` (even H and W) as an H.264 mp4, deterministically."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        # Single-threaded and without lookahead/B-frames: x264's lookahead gave run-to-run
        # differences at some frame sizes (e.g. 96 px) even on one thread.
        stream.codec_context.options = {
            "crf": str(crf),
            "preset": "veryfast",
            "tune": "zerolatency",
        }
        stream.codec_context.thread_count = 1
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _write_clip(job: tuple[ClipSpec, str]) -> None:
    spec, path = job
    write_video(path, render_clip(spec), spec.fps)


# ---------------------------------------------------------------- datasets on disk


def generate(
    out_dir: str | os.PathLike, cfg: SyntheticConfig | None = None, workers: int = 2
) -> Path:
    """Write the clips, ``annotations.jsonl`` (own-data format) and ``clips.jsonl`` (specs).

    Returns ``out_dir``. ``clips.jsonl`` holds each clip's structured description.
    """
    cfg = cfg or SyntheticConfig()
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    specs = make_specs(cfg)
    jobs, annotations, clips = [], [], []
    for split, split_specs in specs.items():
        for i, spec in enumerate(split_specs):
            video = f"videos/{split}_{i:04d}.mp4"
            jobs.append((spec, str(out / video)))
            clips.append({"video": video, "split": split, "spec": spec.to_dict()})
            variants = cfg.train_captions if split == "train" else 1
            annotations += [
                {"video": video, "caption": caption(spec, v), "split": split}
                for v in range(variants)
            ]
    _run(jobs, workers)
    _write_jsonl(out / "annotations.jsonl", annotations)
    _write_jsonl(out / "clips.jsonl", clips)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    return out


def _run(jobs: list[tuple[ClipSpec, str]], workers: int) -> None:
    progress = dict(total=len(jobs), desc="synthetic clips", unit="clip")
    if workers <= 1:
        for job in tqdm(jobs, **progress):
            _write_clip(job)
        return
    context = multiprocessing.get_context("spawn" if os.name == "nt" else "fork")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        for _ in tqdm(pool.map(_write_clip, jobs, chunksize=8), **progress):
            pass


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def read_specs(folder: str | os.PathLike) -> dict[Path, ClipSpec]:
    """Each clip's description from a generated folder's ``clips.jsonl``, by video path."""
    path = Path(folder) / "clips.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {folder} is not a generated synthetic folder")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {Path(folder) / row["video"]: ClipSpec.from_dict(row["spec"]) for row in rows}


def specs_for(videos: Sequence[str | os.PathLike]) -> list[ClipSpec]:
    """The ClipSpec of each generated video, from the ``clips.jsonl`` above its ``videos/``."""
    specs: dict[Path, ClipSpec] = {}
    for folder in dict.fromkeys(Path(v).parent.parent for v in videos):
        specs.update(read_specs(folder))
    missing = [Path(v) for v in videos if Path(v) not in specs]
    if missing:
        where = missing[0].parent.parent / "clips.jsonl"
        raise ValueError(f"{where} describes no clip {missing[0].name}")
    return [specs[Path(v)] for v in videos]


def default_root() -> Path:
    """``$VCB_DATA_DIR/synthetic``, else ``data/synthetic`` in the repository checkout."""
    if os.environ.get("VCB_DATA_DIR"):
        return Path(os.environ["VCB_DATA_DIR"]) / "synthetic"
    repo = Path(__file__).resolve().parents[1]
    base = repo if (repo / "pyproject.toml").is_file() else Path.cwd()
    return base / "data" / "synthetic"


def ensure_synthetic(
    root: str | os.PathLike | None = None,
    cfg: SyntheticConfig | None = None,
    workers: int = 2,
) -> Path:
    """The folder of a synthetic dataset, generated on first use and reused after.

    ``root`` is where datasets live (default ``default_root()``); each config gets its own
    sub-folder. Generation writes to a temporary folder renamed at the end, so an interrupted
    run leaves nothing half-written and concurrent processes do not clash.
    """
    cfg = cfg or SyntheticConfig()
    target = Path(root or default_root()) / cfg.tag()
    if (target / "annotations.jsonl").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    logger.info("generating synthetic clips in %s", target)
    try:
        generate(partial, cfg, workers)
        os.rename(partial, target)
    except OSError:
        if not (target / "annotations.jsonl").is_file():
            raise
        logger.info("another process generated %s first", target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target
