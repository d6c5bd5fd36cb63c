"""The command line of ``vcb_utils/train.py``, generated from the config dataclasses.

Every field of ``ModelConfig``, ``DataConfig``, ``TrainConfig`` and ``RunOptions`` is a flag of
the same name: its docstring is the help, its ``Literal`` type the choices, and the help shows
the value that the chosen preset (or config file) gives it. The reference code's names work too
(``--base_encoder`` for ``--backbone``). A flag left out keeps the preset's value.

Only the standard library and ``vcb_utils.config`` load before the flags are parsed, so
``--help`` answers at once; torch, open_clip and accelerate load when a run starts.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import logging
import os
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal

from vcb_utils.config import (
    PRESETS,
    SECTIONS,
    VALUE_ALIASES,
    Config,
    RunOptions,
    load_config,
    preset,
)

FLAG_ALIASES = {"backbone": ("--base_encoder",), "verbose": ("-v",)}
"""Field -> the reference code's flag names for it."""
FLAG_CONST = {"resume": "auto"}
"""Field -> the value of its flag given alone (``--resume`` = resume from <output_dir>/state)."""
GROUPS = {"run": RunOptions, **SECTIONS}
TITLES = {"run": "what to run", "model": "model", "data": "data", "train": "training"}


def parse_args(argv: Sequence[str] | None = None) -> tuple[Config, RunOptions]:
    """Flags -> (Config, RunOptions): preset, then config file, then explicit flags."""
    parser = build_parser(argv)
    args = vars(parser.parse_args(argv))
    values = {name: {} for name in GROUPS}
    for name, kind in GROUPS.items():
        for f in dataclasses.fields(kind):
            if f.name in args:
                values[name][f.name] = args[f.name]
    if "backbone" in values["model"]:  # the reference code: --base_encoder means its weights
        values["model"].setdefault("pretrained", default_weights(values["model"]["backbone"]))
    options = values.pop("run")
    options.setdefault("do_train", options.get("init_model") is None)  # the reference code
    try:
        return _base_config(args).updated(**values), RunOptions(**options)
    except ValueError as err:  # a value out of range: the usage line and the reason, exit 2
        parser.error(str(err))


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser, its help showing each flag's value under the preset/config that ``argv``
    picks."""
    parser = argparse.ArgumentParser(
        prog="vcb_utils/train.py",
        description="Train and evaluate Video-ColBERT (the reference code's flags, generated "
        "from vcb_utils/config.py). With no flags: the tiny preset on the synthetic dataset, "
        "on CPU, in a few minutes. Defaults shown are those of the chosen preset or config file.",
        argument_default=argparse.SUPPRESS,
    )
    try:
        base = _base_config(vars(_selector().parse_known_args(argv)[0]))
    except (OSError, ValueError) as err:  # a config file that is missing or broken
        parser.error(str(err))
    defaults = {**base.to_dict(), "run": dataclasses.asdict(RunOptions())}
    for name, kind in GROUPS.items():
        group = parser.add_argument_group(TITLES[name])
        if name == "run":
            _add_selectors(group)
        docs = field_docs(kind)
        hints = typing.get_type_hints(kind)
        for f in dataclasses.fields(kind):
            flags = (f"--{f.name}", *FLAG_ALIASES.get(f.name, ()))
            value = defaults[name][f.name]
            help_text = f"{docs.get(f.name, '')} (default: {_shown(value)})".replace("%", "%%")
            group.add_argument(*flags, dest=f.name, help=help_text, **_kind_options(f, hints))
    return parser


def default_weights(backbone: str) -> str:
    """The open_clip weights tag a named backbone means: ``webli`` for SigLIP, else ``openai``."""
    return "webli" if "siglip" in backbone.lower() else "openai"


def _selector() -> argparse.ArgumentParser:
    """The flags that choose the base config, read before the full parser exists."""
    parser = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    _add_selectors(parser)
    parser.add_argument("--backbone", "--base_encoder", dest="backbone")
    parser.add_argument("--datatype")
    return parser


def _add_selectors(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="named settings (default: tiny, or the method.md defaults when --backbone, "
        "a non-synthetic --datatype or --config is given)",
    )
    group.add_argument("--config", help="a .yaml/.json file with model/data/train sections")


def _base_config(args: dict[str, Any]) -> Config:
    """The preset, then the config file; with neither, tiny unless a paper-scale flag is given."""
    config = load_config(args["config"]) if "config" in args else None
    if "preset" in args:
        chosen = preset(args["preset"])
        return chosen.updated(**config.to_dict()) if config else chosen
    if config:
        return config
    paper_scale = "backbone" in args or args.get("datatype", "synthetic") != "synthetic"
    return Config() if paper_scale else preset("tiny")


def field_docs(kind: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, as one line."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(kind)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        is_doc = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
        if isinstance(node, ast.AnnAssign) and is_doc:
            docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def _kind_options(f: dataclasses.Field, hints: dict[str, Any]) -> dict[str, Any]:
    """argparse options for a field: its value type, choices and arity."""
    hint, optional = _unwrap(hints[f.name])
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        aliases = tuple(VALUE_ALIASES.get(f.name, {}))
        return {"choices": (*choices, *aliases), "metavar": "{" + ",".join(choices) + "}"}
    if typing.get_origin(hint) is tuple:
        return {"nargs": "*", "metavar": "PREFIX"}
    if hint is bool:
        return {"type": _bool, "nargs": "?", "const": True, "metavar": "0|1"}
    convert = _optional(hint) if optional else hint
    if f.name in FLAG_CONST:
        return {"type": convert, "nargs": "?", "const": FLAG_CONST[f.name]}
    return {"type": convert, "metavar": hint.__name__.upper()}


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (hint, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        return options[0], True
    return hint, False


def _optional(kind: type) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)

    convert.__name__ = kind.__name__  # argparse names the type in its error messages
    return convert


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected 0 or 1, not {text!r}")


def _shown(value: Any) -> str:
    if isinstance(value, list | tuple):
        return " ".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def configure_output(verbose: bool) -> None:
    """This package's lines (epochs, metrics, summary) on stdout, warnings and errors on
    stderr; the libraries' INFO lines (open_clip, accelerate's saved files) only with ``-v``."""
    results = logging.StreamHandler(sys.stdout)
    results.addFilter(lambda record: record.levelno < logging.WARNING)
    problems = logging.StreamHandler(sys.stderr)
    problems.setLevel(logging.WARNING)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[results, problems],
    )
    logging.getLogger("vcb_utils").setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, then train and/or evaluate; returns the process exit code."""
    config, options = parse_args(argv)
    configure_output(options.verbose)
    # OpenMP threads that spin while they wait steal the CPU from each other, and from any
    # other program, when the cores are shared; set before torch loads (a user's value wins)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from vcb_utils.train import run
    from vcb_utils.training_session import TrainingInterrupted

    try:
        run(config, options)
    except TrainingInterrupted as stop:
        logging.getLogger("vcb_utils.train").error("%s", stop)
        return stop.exit_code
    return 0
