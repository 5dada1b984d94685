"""Evaluating a reasoning model on math problems: acc@1 and the length of its thinking (spec EVAL-*).

    evaluate(model, tokenizer, problems, max_new_tokens=..., samples=1, ...) -> EvalResult

What the paper reports (section 5.1, Tables 1-4): acc@1, the fraction of problems whose final
answer equals the reference, with its standard error sqrt(p(1-p)/n), and how long the model
thinks (the runtime columns grow when a pruned model rambles). Per problem:

1. the prompt: the problem as one user turn, chat-templated with the generation prompt
   (``template_prompt``, the same as Phase I calibration uses), or the raw text with
   ``chat_template=False``;
2. K = ``samples`` generations: greedy (temperature 0, K must be 1) or sampled with
   temperature / top-p from a seeded generator, in batches, left-padded with an attention mask;
3. each reply is split at ``</think>`` and graded (``rac.cli.answers``): status
   ``correct``, ``wrong``, ``no_think_close`` (the thinking never closed, so there is no
   final answer) or ``no_boxed`` (it closed, but wrote no complete ``\\boxed{}``). The last
   two count as wrong and are reported separately.

acc@1 is the mean over all n·K generations (pass@1 estimated from K samples); its standard
error is sqrt(v / n) with v the population variance of the per-problem accuracies, which is
sqrt(p(1-p)/n) for K = 1. Thinking tokens are the generated tokens before the first
``</think>`` (all generated tokens when it never closes; 0 for a model that does not think).
Tokens/s is all generated tokens (up to and including EOS) over the generation time.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field

import torch

from rac.reference.contract.models import eval_mode
from rac.cli.answers import (
    THINK_CLOSE, THINK_OPEN, answers_match, compile_answer_regex, extract_answer, math_verify_available, split_reply,
)
from rac.reference.calibration import eos_token_ids, render_prompt, template_prompt

STATUSES = ("correct", "wrong", "no_think_close", "no_boxed")


@dataclass
class Generation:
    """One graded generation of one problem."""

    id: str
    sample: int
    status: str  # one of STATUSES
    prediction: str | None  # the content of the final \boxed{}, None if there is no final answer
    gold: str
    generated_tokens: int
    thinking_tokens: int
    stopped: str  # "eos" or "limit" (max_new_tokens reached)
    text: str

    @property
    def correct(self) -> bool:
        return self.status == "correct"


@dataclass
class EvalResult:
    """Every generation plus the settings and timings of the run; ``summary()`` gives the paper's numbers."""

    generations: list
    samples: int
    settings: dict
    generation_time_s: float
    wall_time_s: float
    per_kind: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return summarize(self.generations, self.samples, self.generation_time_s, self.wall_time_s,
                         kinds=self.per_kind, settings=self.settings)

    def records(self) -> list:
        return [asdict(g) for g in self.generations]


# --------------------------------------------------------------------------- statistics


def accuracy_and_se(per_problem: list) -> tuple:
    """(mean, standard error) of per-problem accuracies in [0, 1]: SE = sqrt(population variance / n),
    which for 0/1 values is sqrt(p(1-p)/n), the paper's SE."""
    n = len(per_problem)
    if n == 0:
        raise ValueError("per_problem must hold at least one problem")
    p = sum(per_problem) / n
    var = sum((x - p) ** 2 for x in per_problem) / n
    return p, math.sqrt(var / n)


def summarize(generations: list, samples: int, generation_time_s: float, wall_time_s: float,
              kinds: dict | None = None, settings: dict | None = None) -> dict:
    """The run's numbers: acc@1 (SE), answered fraction, the failure counts, thinking tokens
    (mean and median), tokens/s and wall time; with ``kinds`` (id -> kind) the accuracy per kind."""
    by_problem: dict = {}
    for g in generations:
        by_problem.setdefault(g.id, []).append(g.correct)
    per_problem = [sum(v) / len(v) for v in by_problem.values()]
    acc, se = accuracy_and_se(per_problem)
    thinking = [g.thinking_tokens for g in generations]
    generated = sum(g.generated_tokens for g in generations)
    counts = {s: sum(g.status == s for g in generations) for s in STATUSES}
    out = {
        "problems": len(by_problem),
        "samples": samples,
        "acc@1": acc,
        "se": se,
        "answered": (counts["correct"] + counts["wrong"]) / len(generations),
        "counts": counts,
        "stopped_at_limit": sum(g.stopped == "limit" for g in generations),
        "thinking_tokens_mean": statistics.fmean(thinking),
        "thinking_tokens_median": statistics.median(thinking),
        "generated_tokens": generated,
        "tokens_per_s": generated / generation_time_s if generation_time_s > 0 else float("nan"),
        "generation_time_s": generation_time_s,
        "wall_time_s": wall_time_s,
    }
    if kinds:
        per_kind: dict = {}
        for pid, results in by_problem.items():
            per_kind.setdefault(kinds.get(pid, "?"), []).append(sum(results) / len(results))
        out["acc@1_by_kind"] = {k: sum(v) / len(v) for k, v in sorted(per_kind.items())}
    if settings is not None:
        out["settings"] = settings
    return out


# --------------------------------------------------------------------------- prompts and grading


def build_prompts(tokenizer, problems: list, chat_template: bool = True, instruction: str | None = None) -> tuple:
    """(prompt ids per problem, whether the prompts open the thinking block).

    chat_template True: ``template_prompt`` (ValueError if the tokenizer has no chat template:
    pass ``chat_template=False`` to feed the raw text). False: the problem text as
    ``tokenizer(text)`` encodes it (with its BOS, if it adds one). ``instruction`` is appended to
    every problem after a blank line (e.g. R1's "Please reason step by step, and put your final
    answer within \\boxed{}.").
    """
    texts = [p["problem"] + ("\n\n" + instruction if instruction else "") for p in problems]
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "tokenizer has no chat_template: evaluate templates each problem as a user turn with the "
                "generation prompt; pass chat_template=False (rac eval --no-chat-template) to use the raw text"
            )
        ids = [template_prompt(tokenizer, t) for t in texts]
        opened = render_prompt(tokenizer, texts[0]).rstrip().endswith(THINK_OPEN)
    else:
        ids = [torch.tensor(tokenizer(t)["input_ids"], dtype=torch.long) for t in texts]
        opened = texts[0].rstrip().endswith(THINK_OPEN)
    return ids, opened


def grade(pid: str, sample: int, gold: str, tokens: list, tokenizer, think_opened: bool, stopped: str,
          use_math_verify: bool | None, think_close_id: int | None, answer_regex=None) -> Generation:
    """One generation's status, prediction and token counts (see the module docstring). ``answer_regex``: a
    compiled pattern whose first group is the answer (``rac.cli.answers.compile_answer_regex``), instead of
    the last ``\\boxed{}``; status ``no_boxed`` then means it found none."""
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    thinking_text, answer_part, closed = split_reply(text, think_opened)
    if not closed:
        status, prediction = "no_think_close", None
    else:
        prediction = extract_answer(answer_part, answer_regex)
        if prediction is None:
            status = "no_boxed"
        else:
            status = "correct" if answers_match(gold, prediction, use_math_verify) else "wrong"
    # EVAL-5: the tokens before the first </think>, whatever opened the block: a reply whose <think> is
    # corrupted but which closes the block thought all the same (counting it 0 understated a pruned model's
    # thinking); all of them when it never closes; 0 when no tag appears and the prompt opened none.
    if think_close_id is not None and think_close_id in tokens:
        thinking = tokens.index(think_close_id)
    elif THINK_CLOSE in text:  # </think> is not one token: count the tokens of the decoded text before it
        head = text.partition(THINK_CLOSE)[0]
        thinking = len(tokenizer(head, add_special_tokens=False)["input_ids"])
    elif think_opened or THINK_OPEN in text:
        thinking = len(tokens)
    else:
        thinking = 0
    return Generation(pid, sample, status, prediction, gold, len(tokens), thinking, stopped, text)


def _think_close_id(tokenizer) -> int | None:
    ids = tokenizer(THINK_CLOSE, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


# --------------------------------------------------------------------------- generation


def _left_pad(prompts: list, pad_id: int) -> tuple:
    n = max(p.numel() for p in prompts)
    ids = torch.full((len(prompts), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), n), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, n - p.numel():] = p
        mask[r, n - p.numel():] = 1
    return ids, mask


def generate_batch(model, prompts: list, *, max_new_tokens: int, temperature: float, top_p: float, seed: int,
                   pad_id: int, eos_ids: frozenset) -> list:
    """(generated ids up to and including the first EOS, "eos" | "limit") per prompt, one batched
    ``generate`` call (left padding, attention mask). Sampling draws from torch's global generator,
    seeded with ``seed`` right before the call, so a run is reproducible on one machine."""
    ids, mask = _left_pad(prompts, pad_id)
    kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=sorted(eos_ids) or None)
    if temperature == 0:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(ids.to(model.device), attention_mask=mask.to(model.device), **kwargs)
    rows = []
    for row in out[:, ids.shape[1]:].tolist():
        stop = next((i for i, t in enumerate(row) if t in eos_ids), None)
        rows.append((row[: stop + 1], "eos") if stop is not None else (row, "limit"))
    return rows


def _check(problems, max_new_tokens, samples, temperature, top_p, seed, batch_size) -> None:
    if isinstance(problems, (str, bytes)) or not isinstance(problems, (list, tuple)) or not problems:
        raise ValueError("problems must be a non-empty list of dicts with 'problem' and 'answer' (see eval_data)")
    for i, p in enumerate(problems):
        if not isinstance(p, dict) or not isinstance(p.get("problem"), str) or not p["problem"].strip():
            raise ValueError(f"problems[{i}] must be a dict with a non-empty str 'problem'")
        if not isinstance(p.get("answer"), str) or not p["answer"].strip():
            raise ValueError(f"problems[{i}] (id {p.get('id', i)!r}) has no answer: a non-empty str 'answer' is needed")
    for name, value, lo in (("max_new_tokens", max_new_tokens, 1), ("samples", samples, 1),
                            ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    if temperature == 0 and samples > 1:
        raise ValueError(
            f"samples={samples} with temperature 0: greedy decoding gives the same reply every time; "
            "use samples=1 or a temperature > 0"
        )
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be a number with 0 < top_p <= 1, got {top_p!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")


def evaluate(
    model,
    tokenizer,
    problems: list,
    *,
    max_new_tokens: int = 2048,
    samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
    chat_template: bool = True,
    instruction: str | None = None,
    use_math_verify: bool | None = None,
    answer_regex: str | None = None,
    progress=None,
) -> EvalResult:
    """Generate ``samples`` replies per problem and grade them (module docstring).

    ``problems``: dicts with "problem" and "answer" (str), optionally "id" and "kind"
    (``rac.cli.eval_data.load_problems`` makes them). Batches of ``batch_size`` sequences;
    batch b is sampled with seed ``seed + b``. ``progress``: optional callable(done, total).
    """
    _check(problems, max_new_tokens, samples, temperature, top_p, seed, batch_size)
    pattern = compile_answer_regex(answer_regex, "answer_regex")
    start = time.perf_counter()
    prompt_ids, opened = build_prompts(tokenizer, problems, chat_template, instruction)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = eos_token_ids(model, tokenizer)
    if pad_id is None:
        raise ValueError("tokenizer has neither a pad nor an eos token to pad batches with")
    ids = [str(p.get("id", i)) for i, p in enumerate(problems)]
    jobs = [(i, k) for i in range(len(problems)) for k in range(samples)]
    close_id = _think_close_id(tokenizer)
    generations, gen_time = [], 0.0
    with eval_mode(model):
        for b, first in enumerate(range(0, len(jobs), batch_size)):
            batch = jobs[first : first + batch_size]
            t0 = time.perf_counter()
            rows = generate_batch(
                model,
                [prompt_ids[i] for i, _ in batch],
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=seed + b,
                pad_id=pad_id,
                eos_ids=eos_ids,
            )
            gen_time += time.perf_counter() - t0
            for (i, k), (tokens, stopped) in zip(batch, rows):
                generations.append(
                    grade(
                        ids[i], k, problems[i]["answer"], tokens, tokenizer, opened, stopped, use_math_verify, close_id,
                        pattern,
                    )
                )
            if progress is not None:
                progress(min(first + batch_size, len(jobs)), len(jobs))
    settings = {
        "max_new_tokens": max_new_tokens,
        "samples": samples,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "batch_size": batch_size,
        "chat_template": chat_template,
        "instruction": instruction,
        "math_verify": bool(use_math_verify is not False and math_verify_available()),
        "answer_regex": answer_regex,
    }
    kinds = {ids[i]: p["kind"] for i, p in enumerate(problems) if "kind" in p}
    warn_if_no_answers(generations, answer_regex)
    return EvalResult(generations, samples, settings, gen_time, time.perf_counter() - start, kinds)


class NoAnswersWarning(UserWarning):
    """The grader found (almost) no answer in the replies: most likely it looks for the wrong format."""


#: Below this answered fraction the grader, not the model, is the likely cause (EVAL-12).
NO_ANSWERS_FRACTION = 0.05


def warn_if_no_answers(generations: list, answer_regex: str | None) -> None:
    """NoAnswersWarning when fewer than NO_ANSWERS_FRACTION of the replies that closed their thinking gave an
    answer the grader could read: a model that answers in its own format scores 0 with no other sign."""
    closed = [g for g in generations if g.status != "no_think_close"]
    if not closed:
        return
    answered = sum(g.status in ("correct", "wrong") for g in closed) / len(closed)
    if answered < NO_ANSWERS_FRACTION:
        looked_for = f"a match of --answer-regex {answer_regex}" if answer_regex else "a final \\boxed{...}"
        warnings.warn(NoAnswersWarning(
            f"the grader finds no answers: {answered:.1%} of {len(closed)} replies that finished thinking had "
            f"{looked_for} after </think>; if the model answers in another format, pass --answer-regex PATTERN "
            f"(its first group is the answer). First reply's answer part: {_tail(closed[0].text)!r}"
        ), stacklevel=2)


def _tail(text: str, n: int = 120) -> str:
    part = text.partition(THINK_CLOSE)[2] or text
    return part.strip()[:n]
