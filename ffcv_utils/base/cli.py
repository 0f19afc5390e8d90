"""Entry-point plumbing shared by the commands: one clear line for bad input, a clean screen at
exit, and the one strict parser.

The parser: fastargs silently ignores unknown keys in config files, exits with status 0 on invalid
values and also reads environment variables. Here config files and ``--section.key value``
arguments are parsed by us, every key is checked against the declared Sections (misspellings are
refused with a suggestion) and values are type-checked through fastargs
(``validate(mode='errordict')``): any problem is one ``UserError`` line naming the key. Commands
without config files (predict, export, inspect, plot, sample data) use ``ArgParser``, argparse
with the same one-line errors."""
from __future__ import annotations

import argparse
import atexit
import difflib
import os
import sys
import threading
import traceback
from pathlib import Path

from fastargs import Config
from fastargs.validation import Checker


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2, no traceback."""


def _from_numba_finalizer(exc_type, tb) -> bool:
    """numba's finalizers may raise KeyError at interpreter exit; the message is pure noise."""
    if exc_type is not KeyError:
        return False
    return any("numba" in frame.filename for frame in traceback.extract_tb(tb))


def quiet_numba_exit_noise() -> None:
    """Hide the ignored ``KeyError`` that numba's finalizers may print at interpreter exit."""
    prev_excepthook, prev_unraisable = sys.excepthook, sys.unraisablehook

    def excepthook(exc_type, exc, tb):
        if not _from_numba_finalizer(exc_type, tb):
            prev_excepthook(exc_type, exc, tb)

    def unraisablehook(info):
        if not _from_numba_finalizer(info.exc_type, info.exc_traceback):
            prev_unraisable(info)

    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook


def exit_now(code: int) -> None:
    """End the process with ``code`` after every exit handler has run and stdout and stderr are
    flushed, but without the interpreter's teardown. Tearing down frees torch's and numba's
    objects one at a time: 1.5-2 s of CPU after a command's last line (measured on a one-epoch
    CPU run). numba's finalizers are also what print the ignored KeyError. While another
    non-daemon thread runs, this is a plain ``sys.exit``, which waits for that thread."""
    main_thread = threading.main_thread()
    if threading.current_thread() is not main_thread or any(
            t is not main_thread and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()  # what a normal exit runs: multiprocessing joins its children, ...
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said
            pass
    os._exit(code)


def run_main(main, prog: str | None = None) -> None:
    """Run ``main()``; a UserError becomes ``prog: error: ...`` on stderr and exit 2. An int
    that ``main`` returns is the exit status; anything else (a result for callers in Python,
    as ``find_lr``'s) exits 0. The process ends through ``exit_now``."""
    prog = prog or os.path.basename(sys.argv[0])
    quiet_numba_exit_noise()
    try:
        code = main()
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        code = 130
    exit_now(code if isinstance(code, int) else 0)


class ArgParser(argparse.ArgumentParser):
    """argparse whose errors are one ``UserError`` line (no usage block), like the config's."""

    def error(self, message):
        raise UserError(message)


class StrictInt(Checker):
    """An int; integral floats and numeric strings pass, 1.5 or 'abc' do not (fastargs truncates)."""

    def check(self, value):
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.strip())
        raise TypeError(value)

    def help(self):
        return "an integer"


class StrictFloat(Checker):
    def check(self, value):
        if isinstance(value, bool):
            raise TypeError(value)
        return float(value)

    def help(self):
        return "a number"


class Flag(Checker):
    """0/1, also true/false (the public configs write ``lr_tta: true``)."""

    TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}

    def check(self, value):
        if isinstance(value, bool) or value in (0, 1):
            return int(value)
        if isinstance(value, str) and value.strip().lower() in self.TRUE | self.FALSE:
            return int(value.strip().lower() in self.TRUE)
        raise ValueError(value)

    def help(self):
        return "0 or 1"


class FlagOrAuto(Flag):
    """0/1, or ``auto``: the run decides (data.in_memory: from the betons' size and memory)."""

    def check(self, value):
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        return super().check(value)

    def help(self):
        return "0, 1 or auto"


class Text(Checker):
    """A string; YAML numbers (``port: 12355``) are accepted as their text."""

    def check(self, value):
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
        raise TypeError(value)

    def help(self):
        return "a string"


INT, FLOAT, FLAG, TEXT = StrictInt(), StrictFloat(), Flag(), Text()


def choices_text(names) -> str:
    """``a, b or c``: a key's choices for its help line."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def known_keys(cfg: Config) -> list[str]:
    return [".".join(path) for path in cfg.entries]


def _suggest(key: str, keys: list[str]) -> str:
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def read_config_file(path: str, keys: list[str]) -> dict:
    """A YAML/JSON config file as ``{'section.key': value}``; unknown keys are refused."""
    import yaml

    if not Path(path).is_file():
        raise UserError(f"config file not found: {path}")
    try:
        with open(path) as f:
            tree = yaml.safe_load(f) or {}  # YAML is a superset of JSON
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML/JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise UserError(f"{path}: expected a mapping of sections to keys")
    flat = _flatten(tree)
    for key in flat:
        if key not in keys:
            raise UserError(f"{path}: unknown key {key!r}{_suggest(key, keys)}")
    return flat


def parse_argv(argv: list[str], keys: list[str]) -> tuple[list[str], dict]:
    """``(config files, {'section.key': value})`` from ``-C F``/``--config-file F``/``--a.b v``."""
    files, values = [], {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or arg in ("-", "--"):
            raise UserError(f"unexpected argument {arg!r} (options look like --section.key VALUE)")
        name, eq, value = arg.partition("=")
        if not eq:
            if i + 1 >= len(argv):
                raise UserError(f"{name} needs a value")
            value = argv[i + 1]
            i += 1
        i += 1
        if name in ("-C", "--config-file"):
            files.append(value)
            continue
        key = name.lstrip("-")
        if key not in keys:
            raise UserError(f"unknown option --{key}{_suggest(key, keys)}")
        values[key] = value
    return files, values


def collect(cfg: Config, argv: list[str], keys: list[str],
            cli_only: tuple[str, ...] = ()) -> tuple[list[str], dict, dict]:
    """Config files, then ``--key value`` arguments (which win) into ``cfg``. Returns
    ``(files, {key: value} from the files, {key: value} from the command line)``; ``cli_only``
    names options outside ``cfg`` (the writer's ``--split``), returned with the others."""
    files, cli_values = parse_argv(argv, keys + list(cli_only))
    file_values: dict = {}
    for f in files:
        flat = read_config_file(f, keys)
        file_values.update({k: v for k, v in flat.items() if v is not None})
        cfg.collect(_nest(flat))
    cfg.collect(_nest({k: v for k, v in cli_values.items() if k not in cli_only}))
    return files, file_values, cli_values


def check_types(cfg: Config) -> None:
    """One UserError line for the first key, in declaration order, that is missing or whose
    value fastargs refuses."""
    errors = cfg.validate(mode="errordict")
    for path in cfg.entries:
        if path in errors:
            key = ".".join(path)
            param = cfg.entries[path]
            if param.required and path not in cfg.content:
                raise UserError(f"{key} is required (give --{key} VALUE)")
            raise UserError(f"{key}: expected {param.checker.help()}, got "
                            f"{cfg.content.get(path)!r}")


def _nest(flat: dict) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def help_text(cfg: Config, prog: str = "train_imagenet.py") -> str:
    """``--help``: the usage line, then every key with its description and default."""
    lines = [f"usage: {prog} [--config-file FILE ...] [--section.key VALUE ...]", ""]
    for path, param in cfg.entries.items():
        default = "required" if param.required else f"default {param.default!r}"
        lines.append(f"  --{'.'.join(path):28s} {param.desc} ({default})")
    return "\n".join(lines)
