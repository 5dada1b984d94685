"""Options from a file: ``rac prune --config FILE`` (spec CLI-7).

The file holds the command's options by their long names (``num-prompts`` or ``num_prompts``), as
TOML, YAML (with PyYAML installed) or JSON; a ``report.json`` written by ``rac prune`` is a config too:
its ``command.config`` re-runs the same job. Options given on the command line override the file.
Every key is checked against the command's own options (an unknown key is an error naming it and the
file), and every value against the option's type and choices, before any work.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

#: Options that say where the output goes or how this one invocation behaves, never taken from a file or
#: written into a re-runnable config.
NOT_CONFIG = ("config", "out", "overwrite", "func", "command", "quiet")


def _actions(parser: argparse.ArgumentParser) -> dict:
    return {a.dest: a for a in parser._actions if a.dest not in (argparse.SUPPRESS, "help")}


def read_config(path, parser: argparse.ArgumentParser) -> dict:
    """{dest: value} of the config file ``path`` for the command ``parser`` (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config {path}: no such file (expected TOML, YAML or JSON, or a report.json)")
    raw = _load(path)
    if isinstance(raw, dict) and isinstance(raw.get("command"), dict) and "config" in raw["command"]:
        raw = raw["command"]["config"]  # a report.json: the config of the run that wrote it
    if not isinstance(raw, dict):
        raise ValueError(f"--config {path}: must hold a table of options, got {type(raw).__name__}")
    actions = _actions(parser)
    values = {}
    for key, value in raw.items():
        dest = str(key).replace("-", "_")
        if dest in NOT_CONFIG:
            raise ValueError(f"--config {path}: {key!r} is not taken from a file; give it on the command line")
        action = actions.get(dest)
        if action is None:
            known = ", ".join(sorted(d.replace("_", "-") for d in actions if d not in NOT_CONFIG))
            raise ValueError(f"--config {path}: unknown option {key!r} (the options are: {known})")
        values[dest] = _checked(path, key, value, action)
    return values


def _load(path: Path):
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            return tomllib.loads(text)
        if suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ValueError(f"--config {path}: YAML needs PyYAML (pip install pyyaml); "
                                 "or write it as TOML") from None
            return yaml.safe_load(text)
        if suffix == ".json":
            return json.loads(text)
    except ValueError as e:
        if str(e).startswith("--config"):
            raise
        raise ValueError(f"--config {path}: not valid {suffix[1:].upper()} ({e})") from None  # TOML, JSON
    except Exception as e:  # yaml.YAMLError is not a ValueError
        raise ValueError(f"--config {path}: not valid {suffix[1:].upper()} ({e})") from None
    raise ValueError(f"--config {path}: unknown file type {path.suffix!r} (use .toml, .yaml, .yml or .json)")


def _checked(path: Path, key, value, action: argparse.Action):
    """``value`` as the option would parse it, or a ValueError naming the file, the key and what was expected."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ValueError(f"--config {path}: {key!r} is a switch and takes true or false, got {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):
        if not isinstance(value, list):
            raise ValueError(f"--config {path}: {key!r} takes a list, got {value!r}")
        return [_one(path, key, v, action) for v in value]
    if value is None:
        return None
    return _one(path, key, value, action)


def _one(path, key, value, action):
    if isinstance(value, (dict, list, bool)):
        raise ValueError(f"--config {path}: {key!r} takes one value, got {value!r}")
    kind = action.type
    if kind is None:
        value = str(value)
    elif kind is int and isinstance(value, float):
        raise ValueError(f"--config {path}: {key!r} must be an integer, got {value!r}")
    else:
        try:
            value = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"--config {path}: {key!r} must be a {getattr(kind, '__name__', kind)}, "
                             f"got {value!r}") from None
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"--config {path}: {key!r} must be one of {', '.join(map(str, action.choices))}, "
                         f"got {value!r}")
    return value


def rerunnable(args: argparse.Namespace, parser: argparse.ArgumentParser, **resolved) -> dict:
    """Every option of this run by its long name, as ``--config`` reads it back (``resolved``: values the run
    worked out, e.g. the model directory the default resolved to), without the output options."""
    config = {}
    for dest in _actions(parser):
        if dest in NOT_CONFIG or not hasattr(args, dest):
            continue
        value = resolved.get(dest, getattr(args, dest))
        if isinstance(value, Path):
            value = str(value)
        config[dest.replace("_", "-")] = value
    return config


__all__ = ["NOT_CONFIG", "read_config", "rerunnable"]
