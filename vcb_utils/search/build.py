"""Index a large video library on every process at once, resumably: shards, then one merge.

::

    accelerate launch -m vcb_utils.index_cli build --checkpoint runs/best/ --videos clips/ \\
        --index my_index

The videos are cut, in list order, into shards of ``shard_size``. Process ``p`` of ``P``
(accelerate's process index and count; one process without ``accelerate launch``) encodes the
shards ``p, p + P, p + 2P, ...`` with ``vcb_utils.encode.encode_videos`` on its own device and
writes each one, whole (a temporary file renamed), to
``<index>.build/<run>/shard-000012.safetensors``, where ``<run>`` is named after the run's plan
(its videos, shard size, model and framerate): runs that add other videos at the same time each
have their own folder. A shard already written is never encoded again, so a build killed at any
point goes on where it stopped when the same command is run again (with any number of
processes).

When every shard is written, the main process merges them in order into the index
(``VideoIndex.add_embeddings``, then ``save`` every ``merge_videos`` videos: each save is one
crash-safe version; ids already in the index are skipped, so a merge killed half-way resumes
too), builds the candidate index of two-stage search once at the end (``build_ann``, from
``ANN_MIN_VIDEOS`` videos on, unless the index has one), and deletes its run folder (and
``.build`` once no other run uses it). Adding videos to an existing index (``add``) is the same
procedure; runs of it at once append in turn (``VideoIndex.save`` holds the folder's lock).

``<run>/plan.json`` records what the shards hold (the requested video list's
fingerprint, the shard size, the model config and framerate) and ``videos.json`` the videos
being added: a resumed build with other videos or another model is refused instead of mixing
them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from vcb_utils.storage import LOCK_FILE, read_json, remove, write_atomic, write_json_atomic

if TYPE_CHECKING:
    from vcb_utils.search.index import VideoIndex

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
"""File suffixes a folder build takes as videos (case-insensitive)."""
SHARD_SIZE = 512
"""Videos per shard: what a crash can cost, and what one process encodes between writes."""
MERGE_VIDEOS = 50_000
"""Videos added to the index per save while merging (1.3 GB of vectors at 26 x 512 fp16)."""
PLAN_FILE = "plan.json"
VIDEOS_FILE = "videos.json"


@dataclass
class VideoList:
    """The videos to index: ids, paths and captions ("" when none), in order."""

    ids: list[str]
    paths: list[str]
    captions: list[str]

    def __post_init__(self) -> None:
        if not len(self.ids) == len(self.paths) == len(self.captions):
            raise ValueError("one id, path and caption per video")
        seen: dict[str, str] = {}
        for video_id, path in zip(self.ids, self.paths, strict=True):
            if video_id in seen:
                raise ValueError(
                    f"video id {video_id!r} is used twice ({seen[video_id]} and {path}): "
                    "ids must be unique"
                )
            seen[video_id] = path

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, rows: slice) -> VideoList:
        return VideoList(self.ids[rows], self.paths[rows], self.captions[rows])

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for fields in zip(self.ids, self.paths, self.captions, strict=True):
            digest.update(json.dumps(fields).encode())
        return digest.hexdigest()

    def select(self, keep: Sequence[bool]) -> VideoList:
        return VideoList(
            *(
                [v for v, k in zip(values, keep, strict=True) if k]
                for values in (self.ids, self.paths, self.captions)
            )
        )


def videos_in_folder(folder: str | Path) -> VideoList:
    """Every video file under ``folder`` (recursively, sorted); ids are the paths relative to
    the folder without the suffix (``cats/001``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder of videos")
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
    )
    if not files:
        raise ValueError(f"{folder}: no video files ({', '.join(VIDEO_SUFFIXES)})")
    ids = [p.relative_to(folder).with_suffix("").as_posix() for p in files]
    return VideoList(ids, [str(p) for p in files], [""] * len(files))


def videos_in_csv(path: str | Path, video_root: str | Path | None = None) -> VideoList:
    """The videos of a CSV with a ``video`` column (a path, relative to ``video_root``, default
    the CSV's folder) and optional ``id`` and ``caption`` columns. A video on several rows is
    indexed once, with its first caption. Every problem is reported at once, by line."""
    path = Path(path)
    root = Path(video_root) if video_root is not None else path.parent
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from err
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if "video" not in (reader.fieldnames or []):
        raise ValueError(f"{path}: no 'video' column (header: {reader.fieldnames})")
    ids, paths, captions, problems = [], [], [], []
    where: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        video = (row.get("video") or "").strip()
        if not video:
            problems.append(f"{path.name}:{line}: missing 'video'")
            continue
        video_id = (row.get("id") or "").strip() or Path(video).with_suffix("").as_posix()
        if video_id in where:
            first = where[video_id]
            if paths[first] != str(root / video):
                problems.append(
                    f"{path.name}:{line}: id {video_id!r} already names another video "
                    f"({paths[first]})"
                )
            continue
        where[video_id] = len(ids)
        ids.append(video_id)
        paths.append(str(root / video))
        captions.append((row.get("caption") or "").strip())
    if problems:
        raise ValueError(f"{path}: {len(problems)} problem(s):\n" + "\n".join(problems))
    if not ids:
        raise ValueError(f"{path}: no videos")
    return VideoList(ids, paths, captions)


class _ThisProcess:
    """An accelerator as ``encode_videos`` sees it, limited to this process: it encodes the
    whole dataset it is given (no split, no gather)."""

    num_processes = 1
    process_index = 0

    def __init__(self, accelerator) -> None:
        self.device = accelerator.device
        self.is_local_main_process = accelerator.is_local_main_process
        self.autocast = accelerator.autocast


def build_folder(index_dir: str | Path) -> Path:
    """Where the runs of builds and additions of ``index_dir`` write their shards."""
    index_dir = Path(os.path.abspath(index_dir))  # "." has a name too
    return index_dir.with_name(index_dir.name + ".build")


def run_folder(index_dir: str | Path, plan: dict) -> Path:
    """The shards of one run: named after its plan, so that a run resumes in its own folder
    and other runs at the same time have theirs."""
    digest = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
    return build_folder(index_dir) / f"run-{digest[:16]}"


@dataclass
class Indexed:
    """What ``index_videos`` did: the index, and how many of the run's videos it added."""

    index: VideoIndex
    added: int


def index_videos(
    index_dir: str | Path,
    model,
    videos: VideoList,
    *,
    framerate: float,
    batch_size: int = 16,
    num_workers: int = 0,
    shard_size: int = SHARD_SIZE,
    merge_videos: int = MERGE_VIDEOS,
    on_error: str = "skip",
    cache_dir: str | Path | None = None,
    accelerator=None,
    nlist: int | None = None,
):
    """Encode ``videos`` on every process into shards, then merge them into ``index_dir`` (made
    if missing, appended to otherwise); returns the index and the number of videos added on
    the main process, None on others.

    Videos whose id the index already holds are left out (so ``add`` can be run again).
    ``on_error="skip"`` leaves unreadable files out, listed in a warning; ``"raise"`` stops.
    The index folder must be apart from the videos, and empty or an index (ValueError first).
    """
    from vcb_utils.encode import default_accelerator
    from vcb_utils.search import encoding
    from vcb_utils.search.cleanup import JOURNAL_FILE
    from vcb_utils.search.guard import check_apart_from_videos, check_empty_or_index, video_folders
    from vcb_utils.search.index import VideoIndex

    accelerator = accelerator or default_accelerator()
    index_dir = Path(index_dir)
    check_apart_from_videos(index_dir, video_folders(videos.paths))
    if not is_index(index_dir):
        check_empty_or_index(index_dir, {LOCK_FILE, JOURNAL_FILE})
    plan = _plan(videos, shard_size, model, framerate)
    work = run_folder(index_dir, plan)
    existing = None
    if is_index(index_dir):  # the candidate index is needed where the merge happens only
        existing = VideoIndex.load(index_dir, model, ann=accelerator.is_main_process)
    if existing is not None and existing.framerate != framerate:
        raise ValueError(
            f"{index_dir} was built at framerate {existing.framerate}, not {framerate}"
        )
    if accelerator.is_main_process and not (work / PLAN_FILE).is_file():
        if existing is not None:  # a new addition: leave out the videos already indexed
            present = set(existing.ids)
            videos = videos.select([i not in present for i in videos.ids])
        work.mkdir(parents=True, exist_ok=True)
        write_json_atomic(work / VIDEOS_FILE, vars(videos))
        write_json_atomic(work / PLAN_FILE, plan)  # last: the build exists once this is there
    accelerator.wait_for_everyone()
    videos = _check_plan(work, plan)
    shards = range(0, len(videos), shard_size)
    rank, world = accelerator.process_index, accelerator.num_processes
    encode = partial(
        encoding.encode_files,
        model,
        framerate=framerate,
        batch_size=batch_size,
        num_workers=num_workers,
        on_error=on_error,
        cache_dir=cache_dir,
        accelerator=_ThisProcess(accelerator),
    )
    for n in [n for n in range(len(shards)) if n % world == rank]:
        part = slice(n * shard_size, (n + 1) * shard_size)
        _encode_shard(shard_path(work, n), videos[part], encode, rank)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    index, added = merge_shards(
        index_dir, work, len(shards), model, framerate, existing, merge_videos, nlist
    )
    remove(work)
    with suppress(OSError):  # another run's shards may be there
        work.parent.rmdir()
    return Indexed(index, added)


def is_index(index_dir: Path) -> bool:
    """Whether ``index_dir`` holds a saved index."""
    from vcb_utils.search.store import POINTER_FILE

    return (index_dir / POINTER_FILE).is_file()


def _plan(videos: VideoList, shard_size: int, model, framerate: float) -> dict:
    from dataclasses import asdict

    from vcb_utils.search.collection import VECTOR_FIELDS

    config = asdict(model.cfg)
    return json.loads(
        json.dumps(
            {
                "requested": videos.fingerprint(),
                "shard_size": shard_size,
                "framerate": framerate,
                "model": {name: config[name] for name in VECTOR_FIELDS},
            }
        )
    )


def _check_plan(work: Path, plan: dict) -> VideoList:
    """The videos of the build in ``work``; ValueError if it was started with other settings."""
    remedy = f"delete {work} to start the build again"
    saved = read_json(work / PLAN_FILE, remedy)
    if saved != plan:
        differ = sorted(k for k in plan if saved.get(k) != plan[k])
        differ = ["videos" if k == "requested" else k for k in differ]
        raise ValueError(
            f"{work} holds the shards of another build (it differs in {differ}): run the "
            f"command it was started with to finish it, or {remedy}"
        )
    videos = VideoList(**read_json(work / VIDEOS_FILE, remedy))
    done = sum(1 for _ in work.glob("shard-*.safetensors"))
    if done:
        log.info("%s: resuming, %d shard(s) already encoded", work, done)
    return videos


def shard_path(work: Path, n: int) -> Path:
    return work / f"shard-{n:06d}.safetensors"


def _encode_shard(path: Path, videos: VideoList, encode: Callable, rank: int) -> None:
    """Encode the shard ``videos`` with ``encode`` (``encoding.encode_files`` with the build's
    settings) and write it whole to ``path``, unless it is there already."""
    from safetensors.torch import save

    from vcb_utils.search.collection import FIELDS

    if path.is_file():
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        embedding, ids, paths, captions = encode(videos.paths, videos.ids, videos.captions)
    for warning in caught:
        log.warning("%s: %s", path.name, warning.message)
    skipped = sorted(set(videos.paths) - set(paths))
    meta = {"ids": ids, "paths": paths, "captions": captions, "skipped": skipped}
    tensors = {}
    for name in FIELDS if ids else ():
        value = getattr(embedding, name)
        if value is not None:
            value = value.detach().cpu()
            tensors[name] = (value.half() if value.is_floating_point() else value).contiguous()
    write_atomic(path, save(tensors, metadata={k: json.dumps(v) for k, v in meta.items()}))
    log.info(
        "process %d wrote %s (%d videos, %d unreadable)", rank, path.name, len(ids), len(skipped)
    )


def read_shard(path: Path) -> tuple[dict, dict]:
    """The tensors and metadata (ids, paths, captions, skipped) of one shard file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            meta = {k: json.loads(v) for k, v in (file.metadata() or {}).items()}
            tensors = {k: file.get_tensor(k) for k in file.keys()}  # noqa: SIM118
    except (SafetensorError, ValueError) as err:
        raise ValueError(
            f"{path} is corrupt ({err}): delete it and run the command again (it is re-encoded)"
        ) from err
    return tensors, meta


def merge_shards(index_dir, work, n_shards, model, framerate, existing, merge_videos, nlist):
    """Add the shards, in order, to the index; save every ``merge_videos`` videos. Returns the
    index and the number of videos added."""
    from vcb_utils.model import VideoEmbedding
    from vcb_utils.search.collection import FIELDS
    from vcb_utils.search.index import VideoIndex
    from vcb_utils.search.stage import ANN_MIN_VIDEOS

    index = existing
    present = set(index.ids) if index is not None else set()
    pending, added, skipped = 0, 0, []
    for n in tqdm(range(n_shards), desc="merging shards", unit="shard"):
        tensors, meta = read_shard(shard_path(work, n))
        skipped += meta["skipped"]
        keep = [i not in present for i in meta["ids"]]
        if not any(keep):
            continue
        rows = [i for i, k in enumerate(keep) if k]
        embedding = VideoEmbedding(*(tensors[f][rows] if f in tensors else None for f in FIELDS))
        values = [
            [v for v, k in zip(meta[c], keep, strict=True) if k]
            for c in ("ids", "paths", "captions")
        ]
        if index is None:
            index = VideoIndex(
                model.cfg, embedding, values[0], values[1], framerate=framerate, captions=values[2]
            )
        else:
            index.add_embeddings(embedding, values[0], values[1], captions=values[2])
        present.update(values[0])
        pending += len(rows)
        added += len(rows)
        if pending >= merge_videos:
            index.save(index_dir, auto_ann=False)
            pending = 0
    if index is None:
        raise ValueError(f"none of the videos could be read (see {work}); nothing indexed")
    index.save(index_dir, auto_ann=False)
    if index.ann is None and (len(index) >= ANN_MIN_VIDEOS or nlist):
        index.build_ann(nlist=nlist)
        index.save(index_dir, auto_ann=False)
    if skipped:
        log.warning("%d unreadable video(s) left out:\n%s", len(skipped), "\n".join(skipped))
    return index, added
