"""Reading and grading final answers of math problems (spec EVAL-*).

A reasoning model writes its chain of thought inside ``<think>`` ... ``</think>`` and then
its final answer in ``\\boxed{...}`` (the DeepSeek-R1 instruction "put your final answer
within \\boxed{}"). Grading takes three steps, one function each:

- ``split_reply(text, think_opened)``: the thinking and the answer part of a reply, and
  whether the thinking was closed. A reply whose thinking never closes has no answer part.
- ``extract_boxed(text)``: the content of the last ``\\boxed{...}`` (braces nested to any
  depth); None when there is none or it is never closed.
- ``answers_match(gold, pred)``: equivalence. With the optional ``math-verify`` package
  installed (``pip install rac-spec[eval]``), ``verify(parse(gold), parse(pred))`` in that
  order (math-verify's check is deliberately asymmetric, gold first); otherwise, and also
  when math-verify cannot parse one side, exact match after ``normalize_answer``.

``normalize_answer`` is deliberately small and predictable: it removes spacing and
presentation (``$``, ``\\left``/``\\right``, ``\\!``, ``\\text{}``, ``\\dfrac``), thousands
separators and a trailing full stop, takes the right-hand side of a one-letter equation
(``x = 5``), and writes every rational number (``0.50``, ``\\frac{2}{4}``, ``-3/6``) as a
reduced fraction (``1/2``) or an integer, so that equal numbers compare equal.
"""

from __future__ import annotations

import re
from fractions import Fraction

BOXED_COMMANDS = ("\\boxed", "\\fbox")
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


# --------------------------------------------------------------------------- the reply's parts


def split_reply(text: str, think_opened: bool) -> tuple:
    """(thinking, answer_part, closed) of a generated reply.

    ``think_opened``: the prompt already opened the thinking block (the generation prompt ends
    with ``<think>``, as R1 distills' and the project's chat template do). If it did, or the reply
    itself writes ``<think>``, the thinking ends at the first ``</think>``; the answer part is what
    follows and ``closed`` says whether ``</think>`` came. A reply that never closes its thinking
    has answer part None: whatever it boxed inside its thoughts is not a final answer. A model that
    does not think at all (no tag anywhere) gives ("", text, True).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    opened = think_opened or THINK_OPEN in text
    if not opened and THINK_CLOSE not in text:
        return "", text, True
    head, sep, tail = text.partition(THINK_CLOSE)
    if not sep:
        return text, None, False
    if THINK_OPEN in head:
        head = head.split(THINK_OPEN, 1)[1]
    return head, tail, True


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces nested to
    any depth, stripped of surrounding whitespace. None if there is no complete one."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    best, best_at = None, -1
    for command in BOXED_COMMANDS:
        start = 0
        while True:
            at = text.find(command, start)
            if at < 0:
                break
            start = at + len(command)
            content = _braced(text, start)
            if content is not None and at > best_at:
                best, best_at = content.strip(), at
    return best


def compile_answer_regex(pattern: str | None, option: str = "--answer-regex"):
    """``pattern`` compiled, or None for the default (``\\boxed{}``); ValueError naming ``option`` when it does
    not compile or has no group (its first group is the answer)."""
    if pattern is None:
        return None
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"{option} must be a non-empty regular expression, got {pattern!r}")
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{option} {pattern!r} is not a regular expression: {e}") from None
    if compiled.groups < 1:
        raise ValueError(f"{option} {pattern!r} has no group: its first group (...) must capture the answer")
    return compiled


def extract_answer(text: str | None, answer_regex=None) -> str | None:
    """The final answer in a reply's answer part: with ``answer_regex`` (compiled, ``compile_answer_regex``) the
    first group of its last match, stripped (None if it never matches, or the group is empty); otherwise
    ``extract_boxed``. The last match, as the last box: a reply may restate intermediate results first."""
    if answer_regex is None:
        return extract_boxed(text)
    if text is None:
        return None
    found = None
    for match in answer_regex.finditer(text):
        found = match.group(1)
    return found.strip() if found and found.strip() else None


def _braced(text: str, i: int) -> str | None:
    """The content of the brace group that opens at ``text[i]`` (after optional spaces), or None."""
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{" and (j == 0 or text[j - 1] != "\\"):
            depth += 1
        elif text[j] == "}" and text[j - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


# --------------------------------------------------------------------------- normalisation

_REMOVE = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ", "\\displaystyle", "$")
_TEXT_WRAPPERS = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox|mathbf)\s*\{([^{}]*)\}")
_FRAC = re.compile(r"\\frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_FRAC_SHORT = re.compile(r"\\frac(\d)(\d)")
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(,\d{3})+(\.\d+)?$")
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)$")
_EQUATION = re.compile(r"^[A-Za-z]\s*=\s*(.+)$")


def normalize_answer(answer: str) -> str:
    """A canonical string for exact-match grading (see the module docstring for the rules)."""
    if not isinstance(answer, str):
        raise TypeError(f"answer must be a str, got {type(answer).__name__}")
    s = answer.strip()
    m = _EQUATION.match(s)
    if m:
        s = m.group(1)
    for token in _REMOVE:
        s = s.replace(token, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _TEXT_WRAPPERS.sub(r"\1", s)
    s = s.replace("^\\circ", "").replace("^{\\circ}", "")
    s = "".join(s.split())
    s = s.rstrip(".")
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    number = _rational(s)
    if number is not None:
        return str(number)
    return s


def _rational(s: str) -> Fraction | None:
    """``s`` as an exact rational number if it is an integer, a decimal, a/b or \\frac{a}{b}."""
    sign = 1
    if s.startswith(("-", "+")) and s[1:].startswith("\\frac"):  # -\frac{1}{2}
        sign, s = (-1 if s[0] == "-" else 1), s[1:]
    m = _FRAC.fullmatch(s)
    if m:
        num, den = m.group(1), m.group(2)
    elif s.count("/") == 1:
        num, den = s.split("/")
    else:
        num, den = s, None
    if not _NUMBER.match(num) or (den is not None and not _NUMBER.match(den)):
        return None
    try:
        value = Fraction(num.rstrip(".") or "0")
        if den is not None:
            value /= Fraction(den.rstrip(".") or "0")
    except (ValueError, ZeroDivisionError):
        return None
    return sign * value


# --------------------------------------------------------------------------- equivalence


def math_verify_available() -> bool:
    """Whether the optional ``math-verify`` package can be imported."""
    try:
        import math_verify  # noqa: F401
    except ImportError:
        return False
    return True


def answers_match(gold: str, pred: str | None, use_math_verify: bool | None = None) -> bool:
    """Whether the predicted final answer ``pred`` (the content of its ``\\boxed{}``) equals ``gold``.

    ``use_math_verify``: None (default) uses math-verify when it is installed; True requires it
    (ImportError otherwise); False never uses it. With math-verify, ``verify(parse(gold), parse(pred))``
    (gold first, as its documentation says); exact match after ``normalize_answer`` is tried too,
    so an answer that math-verify cannot parse is still graded. ``pred`` None (no answer) is wrong.
    """
    if not isinstance(gold, str) or not gold.strip():
        raise ValueError(f"gold must be a non-empty str, got {gold!r}")
    if pred is None:
        return False
    if not isinstance(pred, str):
        raise TypeError(f"pred must be a str or None, got {type(pred).__name__}")
    if normalize_answer(gold) == normalize_answer(pred):
        return True
    if use_math_verify is False or (use_math_verify is None and not math_verify_available()):
        return False
    return _math_verify(gold, pred)


def _math_verify(gold: str, pred: str) -> bool:
    from math_verify import parse, verify

    # Both sides are bare answers (no surrounding text), so wrap them in a LaTeX environment that
    # math-verify's extractor recognises; parsing_timeout=None: its signal-based timeout only works
    # in the main thread.
    gold_parsed = parse(f"${gold}$", parsing_timeout=None)
    pred_parsed = parse(f"$\\boxed{{{pred}}}$", parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))
