"""The command line: ``python run.py --model resnet20 --ratio 0.95`` prunes, trains and tests.

This is the imperative shell: it maps the arguments onto a :class:`jpanning.config.RunConfig`
(every option is one of its fields, with its help text there) and runs it with
:mod:`jpanning.experiment`. It does no maths and knows no method.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

import jax

from jpanning import config, cpu, experiment, parallel
from jpanning.config import RESUME_MAY_SET, RUN_FILE, RunConfig
from jpanning.errors import JPanningError


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (no usage dump), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def argument_type(parse):
    """An argparse ``type`` of a :mod:`jpanning.config` parser: its one-line message, or
    argparse's own for plain numbers (``invalid int value: 'x'``)."""
    if parse.__name__ in ("int", "float"):
        return parse

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e))

    convert.__name__ = parse.__name__
    return convert


GROUPS = {
    None: "the network",
    "data": "data",
    "pruning": "pruning",
    "options": "the methods' options (each names the methods that read it; the others refuse it)",
    "training": "training",
    "output": "output",
}


def build_parser() -> argparse.ArgumentParser:
    """``run.py``'s parser: one option per :class:`jpanning.config.RunConfig` field and per
    option of the registered methods (:func:`jpanning.config.order`), grouped by part; the
    defaults are the fields'."""
    p = Parser(
        prog="run.py",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    groups = {part: p.add_argument_group(title) for part, title in GROUPS.items()}
    for name in config.order():
        field = config.field_of(name)
        group = groups[config.FIELDS.get(name, "options")]
        meta = dict(field.metadata)
        flag = "--" + name.replace("_", "-")
        kwargs = {"help": config.help_of(name) or None}
        if meta.get("flag"):
            group.add_argument(flag, action="store_true", **kwargs)
            continue
        choices = config.choices_of(name)
        if choices is not None:
            kwargs["choices"] = list(choices)
        else:
            kwargs["type"] = argument_type(meta["parse"])
        for key in ("metavar", "nargs"):
            if meta.get(key) is not None:
                kwargs[key] = meta[key]
        group.add_argument(flag, default=field.default, **kwargs)
    return p


def config_of(args: argparse.Namespace):
    """The :class:`jpanning.config.RunConfig` of parsed arguments (not ``--resume``)."""
    return RunConfig.from_flat(vars(args))


def settings_of(argv) -> dict:
    """The settings ``run.py`` arguments give (those that differ from the defaults), by
    :class:`jpanning.config.RunConfig` field name."""
    return _given(build_parser().parse_args(list(argv)))


def _given(args: argparse.Namespace) -> dict:
    """The parsed arguments that differ from the defaults, by field name."""
    defaults = vars(build_parser().parse_args([]))
    return {k: v for k, v in vars(args).items() if v != defaults[k]}


def argv_of(settings: dict) -> list[str]:
    """``run.py`` arguments that give ``settings`` (field name to value; a flag when True)."""
    argv = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *(",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
                             for v in value)]  # fmt: skip
        elif value not in (None, False):
            argv += [flag, str(value)]
    return argv


def argv_of_config(config) -> list[str]:
    """``run.py`` arguments that run ``config`` (a :class:`jpanning.config.RunConfig`): its
    method, and the settings that differ from that method's defaults."""
    method = config.pruning.method
    defaults = RunConfig.from_flat({"method": method}).flat()
    given = {k: v for k, v in config.flat().items() if k != "run_id" and v != defaults[k]}
    return argv_of({"method": method} | given)


def _resumed_config(args: argparse.Namespace):
    """The config saved in ``args.resume``/run.json, with this call's out and the few
    RESUME_MAY_SET it gives (:func:`jpanning.experiment.resumed_config`)."""
    out = args.resume
    if not os.path.isdir(out):
        raise JPanningError(f"--resume {out!r} is not a directory")
    given = _given(args)
    refused = sorted(k for k in given if k not in (*RESUME_MAY_SET, "resume"))
    if refused:
        flags = ", ".join("--" + k.replace("_", "-") for k in refused)
        allowed = ", ".join("--" + k.replace("_", "-") for k in RESUME_MAY_SET)
        raise JPanningError(
            f"--resume takes the run's arguments from its {RUN_FILE}; {flags} cannot change "
            f"them (only {allowed} may be given)"
        )
    changes = {k: v for k, v in given.items() if k in RESUME_MAY_SET}
    changes |= {"no_progress": args.no_progress, "verbose": args.verbose}
    return experiment.resumed_config(out, **changes)


def run(args: argparse.Namespace, dataset=None) -> dict:
    """:func:`jpanning.experiment.run` for parsed arguments (``--resume OUT``: the run in OUT
    with its own settings); returns the results dict it also writes. ``dataset``: the
    already loaded data of the run (None loads it)."""
    if args.resume is not None:
        config = _resumed_config(args)
        print(f"resuming the run in {config.output.out}")
    else:
        config = config_of(args)
    return experiment.run(config, dataset)


def enable_compilation_cache() -> None:
    """Turn on XLA's persistent compilation cache: a rerun with the same shapes loads its
    programs instead of compiling them (the same programs, so the same results).

    ``$JPANNING_COMPILATION_CACHE`` names the folder (default ``~/.cache/jpanning/xla``);
    ``off`` leaves JAX's settings alone.
    """
    path = os.environ.get("JPANNING_COMPILATION_CACHE", "~/.cache/jpanning/xla")
    if path == "off":
        return
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cpu.configure()  # the process's CPU tuning, before JAX starts (importing jpanning sets none)
    try:
        parallel.initialize()
        enable_compilation_cache()
        run(args)
    except JPanningError as e:
        if args.verbose:
            traceback.print_exc()
        print(f"run.py: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 1)
    except KeyboardInterrupt:
        print("run.py: interrupted", file=sys.stderr)
        return 130
    return 0
