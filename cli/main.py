"""The ``rac`` command: one subcommand per module of ``rac.cli.commands``, so each concern stays in its file.

    rac layer      prune one random layer with every method, print the report   (commands/layer.py)
    rac prune      Algorithm 1 on a Hugging Face model, export the pruned model (commands/prune.py)
    rac calibrate  Phase I only: the calibration set for llm-compressor & co  (commands/calibrate.py)
    rac eval       acc@1 (SE) and thinking tokens of a model on math problems   (commands/eval.py)
    rac experiment the paper's calibration x method x sparsity grid, table, plot (commands/experiment.py)
    rac diagnose   Figure 2: token-wise error ratio prompt-only / RAC, heatmap  (commands/diagnose.py)

Every subcommand module has ``add_parser(subparsers)``, which adds its parser and
sets ``func`` (args -> exit code). Errors of the user's making (ValueError, TypeError, and
OSError: a missing or unwritable file, a full disk) print one line and exit 2; Ctrl-C prints
one line saying how to go on and exits 130; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Modules that contribute a subcommand, in the order ``rac --help`` lists them.
COMMAND_MODULES = (
    "rac.cli.commands.layer",
    "rac.cli.commands.prune",
    "rac.cli.commands.calibrate",
    "rac.cli.commands.eval",
    "rac.cli.commands.experiment",
    "rac.cli.commands.diagnose",
)


def build_parser() -> argparse.ArgumentParser:
    from rac.cli import __version__

    parser = argparse.ArgumentParser(prog="rac", description="Reasoning-Aware Compression (RAC) of reasoning LLMs")
    parser.add_argument("--version", action="version", version=f"rac-spec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


#: What an interrupted command prints, per command: how to go on.
RESUME_HINT = {
    "prune": "re-run the same command to start again; with --checkpoint-dir it resumes after the last finished block",
    "experiment": "re-run the same command with --resume to keep its finished cells (OUT.partial.json)",
    "calibrate": "re-run the same command to start again",
}


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one command (``prune``, ...), as ``rac`` builds it."""
    return build_parser()._subparsers._group_actions[0].choices[name]


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "config", None):  # CLI-7: the file's options, then the command line's over them
            from rac.cli.config import read_config

            sub = parser._subparsers._group_actions[0].choices[args.command]
            sub.set_defaults(**read_config(args.config, sub))
            args = parser.parse_args(argv)
        from rac.cli.options import quiet

        with quiet(bool(getattr(args, "quiet", False))):  # CLI-8: --quiet silences notices too
            return args.func(args)
    except (ValueError, TypeError, OSError) as exc:  # OSError: FileNotFoundError, PermissionError, a full disk
        print(f"rac {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = RESUME_HINT.get(args.command, "nothing was written")
        print(f"\nrac {args.command}: interrupted; outputs are written only complete, so {hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
