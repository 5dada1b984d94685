"""rac.cli: the ``rac`` command and what only the application needs (the top layer).

It imports ``rac.reference``, ``rac.fast`` and ``rac.fixtures``; none of them imports it.

- ``main``: the ``rac`` entry point, one subcommand per module of ``commands/``
  (``layer``, ``prune``, ``eval``, ``experiment``, ``diagnose``);
- ``data`` / ``eval_data``: problem, trace and corpus files;
- ``evaluate`` with ``answers``: acc@1 and thinking tokens (spec EVAL-*);
- ``export``: loading a model to prune and writing the pruned one (EXP-*);
- ``experiment`` / ``experiment_report`` / ``diagnose``: the paper's grid and Figure 2 (XP-*, DIAG-*);
- ``atomic``: all-or-nothing writes of files and directories.
"""

from rac.reference import __version__

__all__ = ["__version__"]
