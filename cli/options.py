"""Options several commands share, defined once: how prompts are templated and how replies are graded.

- ``--no-chat-template`` / ``--chat-template FILE`` on every command that templates prompts (``rac prune``,
  ``rac calibrate``, ``rac experiment``, ``rac diagnose``, ``rac eval``): a model without a chat template
  (trained elsewhere, prompted with raw text) can be calibrated and evaluated; spec CLI-5.
- ``--answer-regex PATTERN`` on every command that grades (``rac eval``, ``rac prune``, ``rac experiment``):
  the first group of the pattern's last match in the answer part is the answer; the default is the last
  ``\\boxed{}`` (spec EVAL-12).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

#: The template ``--no-chat-template`` installs: the user turn's text as it is, after the BOS token when the
#: tokenizer's own encoding starts with one, so a templated prompt is ``tokenizer(text)`` token for token.
RAW_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def add_template_options(parser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--no-chat-template", action="store_true",
                       help="feed each problem's raw text (for a model without a chat template)")
    group.add_argument("--chat-template", default=None, metavar="FILE",
                       help="a Jinja chat template file to use instead of the tokenizer's own")


def add_field_options(parser, answer: bool = True) -> None:
    """--problem-field (and --answer-field): the columns of a problems file or dataset, for data whose names
    are not the usual ones (problem / question / Problem / prompt; answer / final_answer / Answer)."""
    parser.add_argument("--problem-field", default=None, metavar="NAME",
                        help="the field holding the problem text (default: the first of problem, question, "
                             "Problem, prompt)")
    if answer:
        parser.add_argument("--answer-field", default=None, metavar="NAME",
                            help="the field holding the answer (default: answer, final_answer, Answer, or the "
                                 "\\boxed{} of solution)")


def add_answer_option(parser) -> None:
    parser.add_argument("--answer-regex", default=None, metavar="PATTERN",
                        help="grade the first group of this regular expression's last match after </think> "
                             "(default: the last \\boxed{...}), for a model that answers in its own format")


def check_answer_option(args) -> None:
    """ValueError naming --answer-regex before any work when it does not compile or captures nothing."""
    from rac.cli.answers import compile_answer_regex

    compile_answer_regex(getattr(args, "answer_regex", None))


def raw_template(tokenizer) -> str:
    """RAW_TEMPLATE, with the BOS token first when ``tokenizer(text)`` puts one there."""
    bos = tokenizer.bos_token_id
    probe = tokenizer("a")["input_ids"]
    starts_with_bos = bos is not None and len(probe) > 0 and probe[0] == bos
    return ("{{ bos_token }}" if starts_with_bos else "") + RAW_TEMPLATE


def apply_template_options(tokenizer, args, source, needed: bool = True) -> str | None:
    """Install the chat template the options ask for on ``tokenizer``; return the tokenizer's own (to put back
    before the tokenizer is saved with a pruned model). Without either option, a tokenizer with no template
    is a ValueError that says which options fix it, when ``needed`` (a run that templates nothing, text
    calibration without evaluation, needs none). ``source``: the directory named in the message."""
    own = getattr(tokenizer, "chat_template", None)
    if getattr(args, "chat_template", None):
        path = Path(args.chat_template)
        if not path.is_file():
            raise ValueError(f"--chat-template {path}: no such file (expected a Jinja chat template)")
        try:
            tokenizer.chat_template = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"--chat-template {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    elif getattr(args, "no_chat_template", False):
        tokenizer.chat_template = raw_template(tokenizer)
    elif not own and needed:
        raise ValueError(f"--model {source}: its tokenizer has no chat template; pass --no-chat-template to "
                         "use each problem's raw text, or --chat-template FILE")
    return own


@contextmanager
def quiet(enabled: bool = True):
    """--quiet for the duration of a command: notices (``rac.fast.plan.CPUNotice``) and the INFO and WARNING
    lines of transformers and math-verify (its "Timeout is disabled") are not shown; errors still are. The
    filters and levels are put back afterwards (a command may run inside another program)."""
    import logging
    import warnings

    if not enabled:
        yield
        return
    from rac.fast.plan import CPUNotice

    loggers = [logging.getLogger(name) for name in ("math_verify", "transformers", "datasets")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CPUNotice)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


@contextmanager
def torch_threads(threads, option: str = "--threads"):
    """torch's CPU thread count set to ``threads`` (None: left as it is) for the block, then put back (a command
    may run inside another program: the tests). ValueError naming ``option`` unless a positive integer."""
    import torch

    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"{option} must be a positive integer, got {threads!r}")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


__all__ = ["RAW_TEMPLATE", "add_answer_option", "add_template_options", "apply_template_options",
           "add_field_options", "check_answer_option", "quiet", "raw_template", "torch_threads"]
