"""The command line of the video index: build, add, search, info, reindex, calibrate.

::

    # index a folder (or a CSV: --csv videos.csv) with a trained checkpoint; one process ...
    python -m vcb_utils.index_cli build --index my_index --checkpoint runs/best --videos clips/
    # ... or every GPU/process (each encodes its shards; re-run the same command to resume)
    accelerate launch -m vcb_utils.index_cli build --index my_index --checkpoint runs/best \\
        --videos clips/
    python -m vcb_utils.index_cli add --index my_index --checkpoint runs/best --videos more/
    python -m vcb_utils.index_cli search --index my_index --checkpoint runs/best \\
        "a man is cooking" "a dog catches a frisbee" -k 5
    python -m vcb_utils.index_cli info --index my_index
    python -m vcb_utils.index_cli info --index my_index --verify  # re-read every segment's CRC-32
    python -m vcb_utils.index_cli reindex --index my_index      # retrain the candidate index
    python -m vcb_utils.index_cli calibrate --index my_index --target 0.95  # estimate recall
    python -m vcb_utils.index_cli search --index my_index --checkpoint runs/best "a dog" \
        --recall 0.99                                           # trade speed for recall

Only the standard library loads before the flags are parsed, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from vcb_utils.search.engine import DEFAULT_ENGINE, ENGINES


def positive_int(text: str) -> int:
    """An argparse type: an int >= 1."""
    value = _parse(text, int, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def count(text: str) -> int:
    """An argparse type: an int >= 0."""
    value = _parse(text, int, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0 or more")
    return value


def fraction(text: str) -> float:
    """An argparse type: a number in (0, 1]."""
    value = _parse(text, float, "a number")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be above 0 and at most 1")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    value = _parse(text, float, "a number")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number above 0")
    return value


def folder(text: str) -> Path:
    """An argparse type: a path, made absolute (``.`` then has a name, for ``<name>.build``)."""
    return Path(os.path.abspath(text))


def _parse(text: str, kind: type, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vcb_utils.index_cli",
        description="Build, grow and search a Video-ColBERT video index.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (info)")
    commands = parser.add_subparsers(dest="command", required=True)

    def index_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--index", required=True, type=folder, help="the index folder")

    def encode_args(p: argparse.ArgumentParser) -> None:
        index_arg(p)
        p.add_argument("--checkpoint", required=True, type=Path, help="a trained checkpoint folder")
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--videos", type=Path, help="a folder of video files (recursive)")
        source.add_argument(
            "--csv", type=Path, help="a CSV with a 'video' column (and optional 'id', 'caption')"
        )
        p.add_argument(
            "--video-root",
            type=Path,
            help="the folder CSV 'video' paths start from (default: the CSV's folder)",
        )
        p.add_argument(
            "--framerate",
            type=positive_float,
            help="frames per second sampled (default: the "
            "checkpoint's video_framerate; an existing index keeps its own)",
        )
        p.add_argument(
            "--batch-size", type=positive_int, default=16, help="videos per encoder batch"
        )
        p.add_argument("--workers", type=count, default=0, help="video decoding processes")
        p.add_argument(
            "--shard-size", type=positive_int, default=512, help="videos per resumable shard"
        )
        p.add_argument("--cache-dir", type=Path, help="a frame cache to read and fill")
        p.add_argument(
            "--on-error",
            choices=["skip", "raise"],
            default="skip",
            help="an unreadable video: leave it out (listed at the end) or stop",
        )
        p.add_argument("--nlist", type=positive_int, help="coarse lists of the candidate index")

    build = commands.add_parser("build", help="index a folder or CSV of videos (resumable)")
    encode_args(build)
    add = commands.add_parser("add", help="add videos to an index (resumable)")
    encode_args(add)

    search = commands.add_parser("search", help="the top-k videos of text queries")
    index_arg(search)
    search.add_argument("--checkpoint", required=True, type=Path, help="the index's checkpoint")
    search.add_argument("queries", nargs="+", help="one or more text queries")
    search.add_argument("-k", type=positive_int, default=10, help="videos per query")
    search.add_argument("--branch", choices=["both", "F", "V"], default="both")
    search.add_argument("--exact", action="store_true", help="score every video (slow, exact)")
    search.add_argument("--nprobe", type=positive_int, help="coarse lists probed per query vector")
    search.add_argument("--candidates", type=positive_int, help="videos reranked exactly")
    search.add_argument(
        "--recall",
        type=fraction,
        help="the cheapest calibrated settings estimated to reach this recall@10 (1: exact)",
    )
    search.add_argument("--json", action="store_true", help="print JSON lines")

    info = commands.add_parser("info", help="the index's size and settings")
    index_arg(info)
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument(
        "--verify",
        action="store_true",
        help="read every vector segment and check it against its recorded CRC-32",
    )

    reindex = commands.add_parser("reindex", help="retrain the candidate index on every vector")
    index_arg(reindex)
    reindex.add_argument(
        "--nlist", type=positive_int, help="coarse lists (default: sqrt of the vectors)"
    )
    reindex.add_argument(
        "--engine",
        metavar="NAME",
        help=f"candidate engine: {', '.join(ENGINES)} (default {DEFAULT_ENGINE})",
    )
    calibrate = commands.add_parser(
        "calibrate", help="estimate recall@10 and keep the cheapest settings reaching a target"
    )
    index_arg(calibrate)
    calibrate.add_argument("--target", type=fraction, default=0.95, help="recall@10 to reach")
    calibrate.add_argument(
        "--checkpoint",
        type=Path,
        help="the index's checkpoint: its captions become the sample queries (default: "
        "held-out stored videos)",
    )
    calibrate.add_argument("--queries", type=positive_int, default=64, help="sample queries")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose:
        logging.getLogger("vcb_utils").setLevel(logging.INFO)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, OSError) as err:  # OSError: FileNotFoundError, PermissionError, ...
        print(f"error: {err}", file=sys.stderr)
        return 2


def _build(args: argparse.Namespace) -> int:
    from vcb_utils.search.build import build_folder, is_index

    if is_index(args.index) and not build_folder(args.index).is_dir():
        raise ValueError(f"{args.index} is an index already: `add` videos to it")
    return _index_videos(args)


def _add(args: argparse.Namespace) -> int:
    from vcb_utils.search.build import is_index

    if not is_index(args.index):
        raise FileNotFoundError(f"{args.index}: no index there (`build` one first)")
    return _index_videos(args)


def _index_videos(args: argparse.Namespace) -> int:
    from vcb_utils.encode import default_accelerator
    from vcb_utils.model import load_checkpoint
    from vcb_utils.search.build import index_videos, is_index, videos_in_csv, videos_in_folder
    from vcb_utils.search.guard import check_apart_from_videos
    from vcb_utils.search.index import VideoIndex

    if args.videos is not None:
        check_apart_from_videos(args.index, [args.videos])
        videos = videos_in_folder(args.videos)
    else:
        videos = videos_in_csv(args.csv, args.video_root)
    accelerator = default_accelerator()
    model, config = load_checkpoint(args.checkpoint)
    model.to(accelerator.device).eval()
    framerate = args.framerate
    if framerate is None and is_index(args.index):  # an index keeps its framerate
        framerate = VideoIndex.load(args.index, model, ann=False).framerate
    if framerate is None:
        framerate = config.data.video_framerate
    start = time.perf_counter()
    done = index_videos(
        args.index,
        model,
        videos,
        framerate=framerate,
        batch_size=args.batch_size,
        num_workers=args.workers,
        shard_size=args.shard_size,
        on_error=args.on_error,
        cache_dir=args.cache_dir,
        accelerator=accelerator,
        nlist=args.nlist,
    )
    if done is not None:
        print(
            f"{args.index}: added {done.added} of the {len(videos)} videos, "
            f"{len(done.index)} videos in all ({time.perf_counter() - start:.0f} s); "
            f"{_size_line(done.index.stats())}"
        )
    return 0


def _search(args: argparse.Namespace) -> int:
    from vcb_utils.model import load_checkpoint
    from vcb_utils.search.index import VideoIndex

    model, _ = load_checkpoint(args.checkpoint)
    model.eval()
    index = VideoIndex.load(args.index, model)
    for query in args.queries:
        start = time.perf_counter()
        (result,) = index.search(
            query,
            args.k,
            args.branch,
            model=model,
            exact=args.exact,
            nprobe=args.nprobe,
            candidates=args.candidates,
            recall=args.recall,
        )
        seconds = time.perf_counter() - start
        hits = [
            {
                "rank": h.rank,
                "score": {"both": h.score_total, "F": h.score_f, "V": h.score_v}[result.branch],
                "mms_f": h.score_f,
                "mms_v": h.score_v,
                "id": h.id,
                "path": h.path,
                "caption": h.caption,
            }
            for h in result.hits
        ]
        if args.json:
            print(_json({"query": query, "seconds": seconds, "hits": hits}))
            continue
        exact = args.exact or (args.recall is not None and index.settings_for(args.recall) is None)
        how = "two-stage" if index.is_two_stage(exact, args.candidates) else "exact"
        print(f"{query!r}: top {len(hits)} of {len(index)} videos, {how}, {seconds * 1e3:.0f} ms")
        score = {"both": "MMS_F+V", "F": "MMS_F", "V": "MMS_V"}[result.branch]
        print(f"{'rank':>4} {score:>7} {'MMS_F':>7} {'MMS_V':>7}  id  path")
        for h in hits:
            f, v = (("-" if s is None else f"{s:.3f}") for s in (h["mms_f"], h["mms_v"]))
            print(f"{h['rank']:>4} {h['score']:>7.3f} {f:>7} {v:>7}  {h['id']}  {h['path']}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from vcb_utils.search.index import VideoIndex

    index = VideoIndex.load(args.index)
    stats = index.stats()
    if args.verify:
        stats["verified_segments"], stats["unverifiable_segments"] = index.verify()
    if args.json:
        print(_json(stats, indent=1))
        return 0
    print(f"{args.index}: {stats['videos']} videos, {stats['vectors']} vectors")
    print(_size_line(stats))
    disk = stats.get("disk_bytes", {})
    print("on disk: " + ", ".join(f"{k} {_mb(v)}" for k, v in disk.items()))
    ann = stats["ann"]
    if ann is None:
        print("search: exact (no candidate index; `reindex` builds one)")
    else:
        print(
            f"search: two-stage, {ann['engine']} engine, {ann['nlist']} lists x {ann['m']} "
            f"{ann['bits']}-bit PQ codes, trained on {ann['trained_on_videos']} videos; "
            f"settings {_settings(index.settings)}"
        )
        print(_recall_line(ann["calibration"]))
    if args.verify:
        print(
            f"verified: {stats['verified_segments']} segment(s) hold what was written"
            + (
                f"; {stats['unverifiable_segments']} written before checksums were recorded"
                if stats["unverifiable_segments"]
                else ""
            )
        )
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from vcb_utils.model import load_checkpoint
    from vcb_utils.search.index import VideoIndex

    model = None
    if args.checkpoint is not None:
        model, _ = load_checkpoint(args.checkpoint)
        model.eval()
    index = VideoIndex.load(args.index, model)
    start = time.perf_counter()
    measured = index.calibrate(args.target, model=model, sample=args.queries)
    index.save(args.index)
    print(f"{args.index}: calibrated in {time.perf_counter() - start:.0f} s")
    for point in measured.curve:
        print(f"  {_settings(point['settings'])}: recall@10 {point['recall']:.3f}")
    print(_recall_line(measured.summary()))
    print(f"settings kept: {_settings(index.settings)}")
    return 0


def _settings(settings) -> str:
    values = settings if isinstance(settings, dict) else vars(settings)
    return ", ".join(f"{name} {value}" for name, value in values.items())


def _recall_line(calibration: dict | None) -> str:
    if calibration is None:
        return "recall@10: unknown, never calibrated on this index (`calibrate` estimates it)"
    return (
        f"recall@10: {calibration['recall']:.3f} estimated on {calibration['queries']} "
        f"{calibration['source']} (target {calibration['target']}, "
        f"{calibration['videos']} videos)"
    )


def _reindex(args: argparse.Namespace) -> int:
    from vcb_utils.search.index import VideoIndex

    index = VideoIndex.load(args.index, ann=False)  # the old codes are replaced
    start = time.perf_counter()
    index.build_ann(nlist=args.nlist, **({"engine": args.engine} if args.engine else {}))
    index.save(args.index)
    print(f"{args.index}: candidate index rebuilt in {time.perf_counter() - start:.0f} s")
    print(_size_line(index.stats()))
    return 0


def _size_line(stats: dict) -> str:
    per_disk = stats.get("disk_bytes_per_video", 0.0)
    return (
        f"{per_disk / 1e3:.1f} kB per video on disk, {stats['ram_bytes_per_video']:.0f} B per "
        f"video in RAM ({_mb(stats['ram_bytes'])} of codes and ids)"
    )


def _json(data, **options) -> str:
    """``data`` as JSON, a non-finite number as null (JSON has no NaN)."""
    return json.dumps(_finite(data), allow_nan=False, **options)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


COMMANDS = {
    "build": _build,
    "add": _add,
    "search": _search,
    "info": _info,
    "reindex": _reindex,
    "calibrate": _calibrate,
}


if __name__ == "__main__":
    sys.exit(main())
