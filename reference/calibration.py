"""Phase I of Algorithm 1: the calibration tokens (spec CAL-*).

    collect_calibration(model, tokenizer, prompts, mode=...) -> CalibrationSet

The paper (section 4) calibrates on every activation the dense model computes
while it answers: the prompt positions P_m and its own decode positions D_m.
This module makes the *tokens* of that set, each with a source label; Phase II
recomputes the block inputs x_t^(l-1) from them with a teacher-forced forward
(which equals what decoding computed, CAL-1: causal attention, the same weights).

Modes (the paper's calibration columns):

- ``text``: consecutive windows of a generic corpus ("C4"), labelled text;
- ``prompt``: the chat-templated problem statements only (P_m), labelled prompt;
- ``rac``: prompt + an on-policy trace sampled from ``model`` itself (P_m and
  D_m, Algorithm 1 lines 3-6), labelled prompt then decode;
- ``offpolicy``: prompt + a trace from a file or from another model, labelled
  prompt then offpolicy.

Decoding is written as Algorithm 1 reads, one function per step: one forward
over the prompt with a KV cache (line 3, Eqs. 3-4), then one token at a time:
sample z_t from the last position's logits (line 5, Eq. 2 / Eq. 5) and feed it
back through the cache (line 6, Eq. 6). Greedy decoding (temperature 0) gives
the tokens of Hugging Face ``generate(do_sample=False)`` (CAL-2).

Deliberate differences from the RAC authors' code (docs/spec.md lists them):
the token budget is met exactly (the last sequence is cut; theirs keeps the
last row whole), traces are kept as token ids (theirs are decoded with
``skip_special_tokens=True`` and re-tokenised), and each trace's random draws
are keyed by (seed, prompt index, step) (``sampling.py``), so a trace does not
depend on the other prompts or on batching.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from .contract.models import context_length, decoder_blocks, eval_mode, forward_with_cache
from .calibration_set import LABELS, CalibrationSet
from .sampling import sample_next_token

#: Calibration modes (design: the paper's columns).
MODES = ("text", "prompt", "rac", "offpolicy")

#: What the fixtures' (and R1 distills') generation prompt ends with and their traces start with.
THINK_OPEN = "<think>\n"


# --------------------------------------------------------------------------- prompts


def template_prompt(tokenizer, problem: str) -> torch.Tensor:
    """The prompt x = (x_0, ..., x_{T_in - 1}) of section 4: the problem as one user turn,
    chat-templated with the generation prompt (the assistant turn opened), as 1-D int64 ids."""
    _check_chat_template(tokenizer)
    turn = [{"role": "user", "content": problem}]
    enc = tokenizer.apply_chat_template(turn, add_generation_prompt=True, tokenize=True)
    ids = enc["input_ids"] if hasattr(enc, "keys") else enc  # transformers 5 returns a BatchEncoding, 4 a list
    return torch.tensor(ids, dtype=torch.long)


def render_prompt(tokenizer, problem: str) -> str:
    """The same templated prompt as text (used to see whether it already opens ``<think>``)."""
    _check_chat_template(tokenizer)
    turn = [{"role": "user", "content": problem}]
    return tokenizer.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)


def trace_token_ids(tokenizer, trace: str, prompt_text: str) -> torch.Tensor:
    """An off-policy trace as ids, to be appended to its templated prompt.

    Tokenised without special tokens (no BOS in the middle of a sequence). If the
    prompt already ends with ``<think>\\n`` (the generation prompt opens the
    reasoning block, as in R1 distills and the fixtures) and the trace starts with
    it too, the trace's copy is dropped so the block is opened once, exactly as
    the chat template renders the whole conversation. No EOS is appended.
    """
    if prompt_text.endswith(THINK_OPEN) and trace.startswith(THINK_OPEN):
        trace = trace[len(THINK_OPEN):]
    return torch.tensor(tokenizer(trace, add_special_tokens=False)["input_ids"], dtype=torch.long)


def corpus_windows(tokenizer, corpus: str, window: int) -> list:
    """The ``text`` mode: the corpus tokenised once (no special tokens) and cut into
    consecutive, non-overlapping windows of ``window`` tokens; a shorter tail is dropped."""
    ids = torch.tensor(tokenizer(corpus, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)
    return [ids[i : i + window] for i in range(0, ids.numel() - window + 1, window)]


# --------------------------------------------------------------------------- forward passes (Eqs. 3-4, 6)


class BlockInputRecorder:
    """Forward pre-hooks on every decoder block: records x^(l-1), the input of block l, at every
    position of every forward call while active (``with BlockInputRecorder(model) as rec``)."""

    def __init__(self, model):
        self.layers = decoder_blocks(model)
        self.calls = [[] for _ in self.layers]
        self._handles = []

    def _hook(self, index):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self.calls[index].append(hidden.detach()[0].to("cpu", copy=True))  # [positions, hidden]

        return hook

    def __enter__(self):
        self._handles = [
            layer.register_forward_pre_hook(self._hook(i), with_kwargs=True) for i, layer in enumerate(self.layers)
        ]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def stacked(self) -> torch.Tensor:
        """[num_blocks, positions, hidden]: the recorded positions of all calls, in call order."""
        return torch.stack([torch.cat(calls, dim=0) for calls in self.calls])


def prompt_forward(model, prompt_ids: torch.Tensor):
    """Algorithm 1 line 3: x_t^(0) = E e_{x_t} and x_t^(l) = f_l(...) for every t in P (Eqs. 3-4),
    one forward over the whole prompt filling the KV cache. Returns (logits of the last position, cache)."""
    logits, cache = forward_with_cache(model, prompt_ids.to(model.device)[None])
    return logits[0, -1], cache


def decode_step(model, token: int, cache):
    """Algorithm 1 line 6 / Eq. 6: feed the sampled z_t back, x_t^(0) = E e_{z_t}, and compute its
    x_t^(l) for every block from the cached keys and values of z_{0:t-1}. Returns (logits, cache)."""
    ids = torch.tensor([[token]], dtype=torch.long, device=model.device)
    logits, cache = forward_with_cache(model, ids, cache)
    return logits[0, -1], cache


def teacher_forced_block_inputs(model, ids: torch.Tensor) -> torch.Tensor:
    """The block inputs of a finished sequence from one causal forward over it (how Phase II
    recomputes them): [num_blocks, len(ids), hidden]."""
    with BlockInputRecorder(model) as rec:
        model(input_ids=ids.to(model.device)[None], use_cache=False)
    return rec.stacked()


@dataclass
class Trace:
    """One decoded sequence: the generated ids (1-D, CPU), why it stopped ("eos" or "limit"),
    and, with capture, the block inputs of prompt + generated tokens [num_blocks, seq, hidden]."""

    tokens: torch.Tensor
    stop: str
    activations: torch.Tensor | None = None


def decode_trace(model, prompt_ids, *, max_new_tokens, temperature, top_k=0, top_p, seed, stream, eos_ids,
                 capture=False) -> Trace:
    """Algorithm 1 lines 3-6 for one prompt: the prompt phase, then up to ``max_new_tokens`` decode
    steps, each sampling z_t (Eq. 2/5; ``sampling.py``, with this prompt's ``stream`` and the step
    number as the random key) and feeding it back (Eq. 6). Stops after a token in ``eos_ids``
    (that token is kept, as generate returns it, and is itself fed through the model, line 6, so its
    block inputs exist and match a teacher-forced forward) or after ``max_new_tokens`` tokens."""
    recorder = BlockInputRecorder(model) if capture else None
    tokens, stop = [], "limit"
    with recorder if recorder is not None else nullcontext():
        logits, cache = prompt_forward(model, prompt_ids)
        for step in range(max_new_tokens):
            z = sample_next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                  stream=stream, step=step)
            tokens.append(z)
            logits, cache = decode_step(model, z, cache)
            if z in eos_ids:
                stop = "eos"
                break
    acts = recorder.stacked() if recorder is not None else None
    return Trace(torch.tensor(tokens, dtype=torch.long), stop, acts)


# --------------------------------------------------------------------------- checks


def _check_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "tokenizer has no chat_template; prompts are templated as a user turn with add_generation_prompt=True"
        )


def check_calibration_options(mode, max_new_tokens, temperature, top_k, top_p, token_budget, window, seed) -> None:
    """ValueError naming the argument for any bad Phase I option (CAL-9)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 = off), got {top_k!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be a number with 0 < top_p <= 1, got {top_p!r}")
    bad_budget = isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget <= 0
    if token_budget is not None and bad_budget:
        raise ValueError(f"token_budget must be None or an int > 0, got {token_budget!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        raise ValueError(f"window must be an int > 0, got {window!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")


def check_prompts(prompts) -> None:
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts must be a non-empty list of problem statements (str)")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompts[{i}] must be a str, got {type(p).__name__}")


def check_prompt_lengths(prompt_ids: list, context, extra: int, what: str, first: int = 0) -> None:
    """ValueError naming the prompt index if prompt (+ ``extra`` tokens of ``what``) exceeds the context."""
    if context is None:
        return
    for i, ids in enumerate(prompt_ids, start=first):
        n = ids.numel()
        if n > context:
            raise ValueError(
                f"prompts[{i}]: the templated prompt has {n} tokens, longer than the model's context ({context})"
            )
        if n + extra > context:
            raise ValueError(
                f"prompts[{i}]: the templated prompt has {n} tokens; with {what} the sequence could reach "
                f"{n + extra} tokens, more than the model's context ({context})"
            )


def eos_token_ids(model, tokenizer) -> frozenset:
    """The ids that end a trace: ``model.generation_config.eos_token_id`` (an int or a list), as
    generate uses them, else ``tokenizer.eos_token_id``."""
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return frozenset()
    return frozenset([eos] if isinstance(eos, int) else eos)


# --------------------------------------------------------------------------- collection


@dataclass
class _Row:
    """One calibration sequence in the making (ids, labels, optional block inputs, why a trace stopped)."""

    ids: torch.Tensor
    labels: torch.Tensor
    activations: torch.Tensor | None = None
    stop: str | None = None  # generated traces only: "eos", "limit" or "budget"

    def truncate(self, n: int) -> "_Row":
        if self.ids.numel() <= n:
            return self
        acts = None if self.activations is None else self.activations[:, :n]
        return _Row(self.ids[:n], self.labels[:n], acts, "budget" if self.stop is not None else None)


@dataclass
class _Job:
    """What every mode needs: the model, the decoder's settings and the budget."""

    model: object
    tokenizer: object
    opts: dict  # max_new_tokens, temperature, top_k, top_p
    seed: int
    eos_ids: frozenset
    token_budget: int | None
    capture: bool
    context: int | None
    progress: object = None  # callable(done, total, description) or None

    def block_inputs(self, ids):
        """Block inputs of ``model`` over ``ids`` when capturing (one causal forward), else None."""
        return teacher_forced_block_inputs(self.model, ids) if self.capture else None


def labelled(*parts) -> tuple:
    """Concatenate (ids, label) parts into a sequence and its per-token label codes."""
    ids = torch.cat([p for p, _ in parts])
    labels = torch.cat([torch.full((p.numel(),), LABELS.index(lab), dtype=torch.long) for p, lab in parts])
    return ids, labels


def _budgeted(make_row, items, token_budget, progress=None) -> list:
    """Rows in order until ``token_budget`` tokens (all of them without a budget); the last row is
    cut so the total equals the budget exactly. ``make_row(item, remaining)`` may return None (skip).
    ``progress(done, total, description)`` is called after each item when given."""
    rows, total = [], 0
    items = list(items)
    for done, item in enumerate(items, start=1):
        remaining = None if token_budget is None else token_budget - total
        if remaining == 0:
            break
        row = make_row(item, remaining)
        if row is not None:
            if remaining is not None:
                row = row.truncate(remaining)
            rows.append(row)
            total += row.ids.numel()
        if progress is not None:
            progress(done, len(items), f"{total} tokens")
    return rows


def _generate_row(job, model, prompt, stream, label, remaining, capture) -> _Row:
    """Prompt number ``stream`` + a trace decoded by ``model`` (Algorithm 1 lines 3-6); with a budget,
    decoding stops as soon as prompt + trace reach the remaining budget."""
    limit = job.opts["max_new_tokens"]
    if remaining is not None:
        limit = max(0, min(limit, remaining - prompt.numel()))
    trace = decode_trace(
        model, prompt, max_new_tokens=limit, temperature=job.opts["temperature"], top_k=job.opts["top_k"],
        top_p=job.opts["top_p"], seed=job.seed, stream=stream, eos_ids=job.eos_ids, capture=capture,
    )
    stop = "budget" if trace.stop == "limit" and limit < job.opts["max_new_tokens"] else trace.stop
    ids, labels = labelled((prompt, "prompt"), (trace.tokens, label))
    return _Row(ids, labels, trace.activations, stop)


def collect_calibration(
    model, tokenizer, prompts, *, mode, max_new_tokens=256, temperature=0.0, top_k=0, top_p=1.0, seed=0,
    token_budget=None, corpus=None, traces=None, trace_model=None, trace_ids=None, window=128, capture=False,
    progress=None, check_policy=True,
) -> CalibrationSet:
    """Phase I of Algorithm 1: the calibration sequences of ``mode`` with a source label per token.

    prompts: problem statements, each templated as one user turn (``template_prompt``).
    mode: "text" (``corpus`` windows of ``window`` tokens; prompts unused), "prompt",
        "rac" (prompt + on-policy trace of ``model``) or "offpolicy" (prompt + ``traces[i]``,
        None = skip that prompt, or a trace decoded by ``trace_model``, same tokenizer).
    max_new_tokens, temperature, top_k, top_p: the decoder (T_max of Algorithm 1; temperature 0 =
        greedy; top_k 0 = off), applied as Hugging Face does (``sampling.py``).
        A trace ends at EOS (kept, labelled as the trace) or after max_new_tokens.
    seed: with the prompt's index and the step, the key of every random draw (``sampling.py``).
    token_budget: total tokens, as the paper compares modes. Sequences are added in order;
        the last one is cut so the total is exactly the budget (the authors' code keeps the
        last row whole instead); in rac, decoding of the last trace stops at the budget.
        If the data runs out first: a UserWarning and what there is.
    trace_ids: for "rac" or "offpolicy": per prompt a ``GivenTrace`` (token ids from a serving engine,
        ``given_traces.py``) or None (skip it); nothing is decoded. With "rac" the traces are labelled
        decode and the on-policy claim is checked (``check_on_policy``, result in meta["policy_check"]).
        ``temperature`` then says how they were sampled (0: greedy, replayed token for token).
        ``check_policy=False`` skips that check (it runs the whole model; streamed weights cannot).
    capture: also return, per sequence, the input of every decoder block at every position
        as computed while the set was made (decode time for rac; one forward over the
        sequence otherwise), in ``activations``. They are always ``model``'s (for offpolicy
        with ``trace_model``, from a forward over the finished sequence).
    progress: optional callable(done, total, description), called after each prompt or window.

    Prompts are templated and checked against the model's context before any decoding.
    The model runs in eval mode under torch.no_grad(); its training flag is restored.
    """
    check_calibration_options(mode, max_new_tokens, temperature, top_k, top_p, token_budget, window, seed)
    opts = dict(max_new_tokens=max_new_tokens, temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))
    job = _Job(model, tokenizer, opts, seed, eos_token_ids(model, tokenizer),
               token_budget, capture, context_length(model), progress)
    meta = dict(mode=mode, seed=seed, **opts, token_budget=token_budget)
    with eval_mode(model, trace_model):
        with torch.no_grad():
            if trace_ids is not None:
                rows = _collect_given_ids(job, mode, prompts, trace_ids, traces, trace_model, meta, check_policy)
            else:
                rows = _collect(job, mode, prompts, corpus, traces, trace_model, window, meta)
    total = sum(r.ids.numel() for r in rows)
    if token_budget is not None and total < token_budget:
        warnings.warn(
            f"collect_calibration: the data ran out at {total} tokens, short of token_budget={token_budget}",
            UserWarning, stacklevel=2,
        )
    stops = [r.stop for r in rows if r.stop is not None]
    meta.update(tokens=total, sequences=len(rows), eos_token_ids=sorted(job.eos_ids),
                trace_stops={k: stops.count(k) for k in ("eos", "limit", "budget")})
    acts = [r.activations for r in rows] if capture else None
    return CalibrationSet([r.ids for r in rows], [r.labels for r in rows], meta, acts)


def _collect(job, mode, prompts, corpus, traces, trace_model, window, meta) -> list:
    """Dispatch on the mode; extra facts go into ``meta``."""
    if mode == "text":
        meta["window"] = window
        return _collect_text(job, corpus, window)
    check_prompts(prompts)
    prompt_ids = [template_prompt(job.tokenizer, p) for p in prompts]
    if mode == "prompt":
        check_prompt_lengths(prompt_ids, job.context, 0, "")
        # capture: one forward over the prompt, which is Algorithm 1's prompt phase (line 3)
        make_row = lambda ids, _: _Row(*labelled((ids, "prompt")), job.block_inputs(ids))  # noqa: E731
        return _budgeted(make_row, prompt_ids, job.token_budget, job.progress)
    if mode == "rac":
        max_new = job.opts["max_new_tokens"]
        check_prompt_lengths(prompt_ids, job.context, max_new, f"max_new_tokens={max_new}")

        def make_row(item, remaining):
            stream, ids = item
            return _generate_row(job, job.model, ids, stream, "decode", remaining, job.capture)

        return _budgeted(make_row, enumerate(prompt_ids), job.token_budget, job.progress)
    if (traces is None) == (trace_model is None):
        raise ValueError("mode='offpolicy' needs exactly one of traces (a str or None per prompt) or trace_model")
    if trace_model is not None:
        meta["trace_source"] = "trace_model"
        return _collect_offpolicy_generated(job, prompt_ids, trace_model)
    meta["trace_source"] = "traces"
    meta["skipped"] = [i for i, t in enumerate(traces) if t is None] if isinstance(traces, (list, tuple)) else None
    return _collect_offpolicy_file(job, prompts, prompt_ids, traces)


def _collect_given_ids(job, mode, prompts, trace_ids, traces, trace_model, meta, check_policy=True) -> list:
    """Prompt + a trace given as token ids (a serving engine's output), labelled decode (mode rac, the on-policy
    claim checked) or offpolicy; None skips a prompt. Budget and context as for every mode."""
    from .given_traces import GivenTrace, check_on_policy, prompt_and_trace

    if mode not in ("rac", "offpolicy"):
        raise ValueError(f"trace_ids are traces: they need mode 'rac' or 'offpolicy', got mode={mode!r}")
    if traces is not None or trace_model is not None:
        raise ValueError("trace_ids cannot be combined with traces or trace_model (one source of traces)")
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or len(prompts) != len(trace_ids):
        raise ValueError(f"trace_ids must have one entry (a GivenTrace or None) per prompt ({len(prompts)}), "
                         f"got {len(trace_ids) if hasattr(trace_ids, '__len__') else trace_ids!r}")
    vocab = job.model.get_input_embeddings().num_embeddings
    pairs = []
    for i, (problem, given) in enumerate(zip(prompts, trace_ids)):
        if given is None:
            pairs.append(None)
            continue
        if not isinstance(given, GivenTrace):
            raise ValueError(f"trace_ids[{i}] must be a GivenTrace or None, got {type(given).__name__}")
        prompt, trace = prompt_and_trace(job.tokenizer, problem, given, i, vocab, template_prompt)
        check_prompt_lengths([prompt], job.context, trace.numel(), f"trace_ids[{i}] ({trace.numel()} tokens)", first=i)
        pairs.append((prompt, trace))
    label = "decode" if mode == "rac" else "offpolicy"

    def make_row(i, remaining):
        if pairs[i] is None:
            return None
        ids, labels = labelled((pairs[i][0], "prompt"), (pairs[i][1], label))
        if remaining is not None:
            ids, labels = ids[:remaining], labels[:remaining]
        return _Row(ids, labels, job.block_inputs(ids))

    rows = _budgeted(make_row, range(len(pairs)), job.token_budget, job.progress)
    meta["trace_source"] = "token ids"
    meta["skipped"] = [i for i, p in enumerate(pairs) if p is None]
    if mode == "rac" and not check_policy:
        meta["policy_check"] = {"skipped": "the on-policy check needs the whole model (streamed weights)"}
    elif mode == "rac":
        kept = [p for p in pairs if p is not None]
        meta["policy_check"] = check_on_policy(
            job.model, [torch.cat(p) for p in kept], [p[0].numel() for p in kept],
            temperature=job.opts["temperature"],
        )
    return rows


def _collect_text(job, corpus, window) -> list:
    """The ``text`` mode: corpus windows, labelled text."""
    if not isinstance(corpus, str) or not corpus.strip():
        raise ValueError("corpus must be a non-empty str for mode='text' (e.g. rac.cli.data.read_corpus(path))")
    if job.context is not None and window > job.context:
        raise ValueError(f"window must be at most the model's context ({job.context}), got {window}")

    def make_row(ids, remaining):
        return _Row(*labelled((ids, "text")), job.block_inputs(ids if remaining is None else ids[:remaining]))

    return _budgeted(make_row, corpus_windows(job.tokenizer, corpus, window), job.token_budget, job.progress)


def _collect_offpolicy_generated(job, prompt_ids, trace_model) -> list:
    """Prompt + a trace decoded by ``trace_model`` with the same sampler, labelled offpolicy."""
    max_new = job.opts["max_new_tokens"]
    check_prompt_lengths(prompt_ids, job.context, max_new, f"max_new_tokens={max_new}")

    def make_row(item, remaining):
        stream, ids = item
        row = _generate_row(job, trace_model, ids, stream, "offpolicy", remaining, capture=False)
        row.activations = job.block_inputs(row.ids)
        return row

    return _budgeted(make_row, enumerate(prompt_ids), job.token_budget, job.progress)


def _collect_offpolicy_file(job, prompts, prompt_ids, traces) -> list:
    """Prompt + a given trace text (``trace_token_ids``), labelled offpolicy; None skips the prompt."""
    trace_ids = _offpolicy_trace_ids(job, prompts, prompt_ids, traces)

    def make_row(i, remaining):
        if trace_ids[i] is None:
            return None
        ids, labels = labelled((prompt_ids[i], "prompt"), (trace_ids[i], "offpolicy"))
        if remaining is not None:
            ids, labels = ids[:remaining], labels[:remaining]
        return _Row(ids, labels, job.block_inputs(ids))

    return _budgeted(make_row, range(len(prompts)), job.token_budget, job.progress)


def _offpolicy_trace_ids(job, prompts, prompt_ids, traces) -> list:
    """Token ids of each given trace (None stays None); checks alignment and the context."""
    if isinstance(traces, str) or not isinstance(traces, (list, tuple)) or len(traces) != len(prompts):
        raise ValueError(f"traces must be a list with one entry (str or None) per prompt ({len(prompts)})")
    out = []
    for i, (problem, trace) in enumerate(zip(prompts, traces)):
        if trace is None:
            out.append(None)
            continue
        if not isinstance(trace, str):
            raise ValueError(f"traces[{i}] must be a str or None, got {type(trace).__name__}")
        ids = trace_token_ids(job.tokenizer, trace, render_prompt(job.tokenizer, problem))
        check_prompt_lengths([prompt_ids[i]], job.context, ids.numel(), f"traces[{i}] ({ids.numel()} tokens)", first=i)
        out.append(ids)
    return out
