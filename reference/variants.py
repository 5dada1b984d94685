"""Calibration variants that followed RAC (spec section 13, VAR-*), as transformations of Phase I's output.

Phase II consumes a ``CalibrationSet`` (H = sum_t w_t x_t x_t^T over its tokens), so each variant is
either a new set of token weights on a set (``decode_only``, ``stream_normalised``), a choice of its
sequences (``select_traces``), or a composition of Phase I and Phase II (``regenerate``). Both
implementations run them: ``rac.reference.compress`` and ``rac.fast.compress`` weight H's rows by
``CalibrationSet.token_weights``; ``regenerate`` takes the ``collect`` and ``compress`` to use.

    decode_only(calib)                        prompt tokens weight 0, every other token 1 (VAR-2)
    stream_normalised(calib, weights=None)    token of source s: w_s / N_s, scaled to total N (VAR-3)
    select_traces(calib, budget, close_ids, rule="shortest")   closed traces, by length, cut (VAR-4)
    regenerate(model, tokenizer, prompts, schedule, method=...) Phase I + II at each step (VAR-5)
"""

from __future__ import annotations

import torch

from .calibration_set import LABELS, CalibrationSet

#: The variants' names as calibration columns of ``rac experiment`` (VAR-6).
VARIANTS = ("decode_only", "stream_norm", "select_short", "select_long", "regen")

_PROMPT, _DECODE = LABELS.index("prompt"), LABELS.index("decode")


def _check_set(calib, name: str = "calib") -> None:
    if not isinstance(calib, CalibrationSet):
        raise TypeError(f"{name} must be a CalibrationSet, got {type(calib).__name__}")


def _with_weights(calib: CalibrationSet, weights: list, variant: str, **facts) -> CalibrationSet:
    meta = dict(calib.meta, variant=variant, **facts)
    return CalibrationSet(list(calib.sequences), list(calib.labels), meta, calib.activations, weights)


def decode_only(calib: CalibrationSet) -> CalibrationSet:
    """VAR-2: the same sequences, every ``prompt`` token of weight 0 and every other token of weight 1.
    The prompt is still run through the model (the trace's tokens attend to it); it adds nothing to H."""
    _check_set(calib)
    weights = [(lab != _PROMPT).to(torch.float64) for lab in calib.labels]
    return _with_weights(calib, weights, "decode_only")


def stream_normalised(calib: CalibrationSet, weights: dict | None = None) -> CalibrationSet:
    """VAR-3: H = c * sum_s w_s H_s / N_s over the sources s present (N_s > 0 tokens), as token weights
    c w_s / N_s, with c = N / sum_s w_s so that the weights add up to the set's N tokens.

    weights: {source label: w_s >= 0}, one entry for every source present; None: w_s = 1 for each
    (every stream gets an equal share of H whatever its token count)."""
    _check_set(calib)
    present = [label for label in LABELS if calib.count(label) > 0]
    if weights is None:
        weights = {label: 1.0 for label in present}
    if not isinstance(weights, dict):
        raise TypeError(f"weights must be a dict {{source label: weight}}, got {type(weights).__name__}")
    unknown = sorted(set(weights) - set(LABELS))
    if unknown:
        raise ValueError(f"weights: unknown source label(s) {unknown}; the labels are {list(LABELS)}")
    missing = [label for label in present if label not in weights]
    if missing:
        raise ValueError(f"weights: no weight for the source(s) {missing} present in the set")
    for label, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not (w >= 0) or w == float("inf"):
            raise ValueError(f"weights[{label!r}] must be a finite number >= 0, got {w!r}")
    total_w = sum(float(weights[label]) for label in present)
    if total_w <= 0:
        raise ValueError("weights: the sources present must not all have weight 0")
    n = calib.num_tokens
    per_token = torch.zeros(len(LABELS), dtype=torch.float64)
    for label in present:
        per_token[LABELS.index(label)] = n * float(weights[label]) / (calib.count(label) * total_w)
    out = [per_token[lab] for lab in calib.labels]
    return _with_weights(calib, out, "stream_norm",
                         stream_weights={label: float(weights[label]) for label in present})


def _closes(trace: torch.Tensor, close_ids: list) -> bool:
    k = len(close_ids)
    if k == 0 or trace.numel() < k:
        return False
    target = torch.tensor(close_ids, dtype=trace.dtype)
    return bool((trace.unfold(0, k, 1) == target).all(dim=1).any())


def select_traces(calib: CalibrationSet, token_budget: int, close_ids, rule: str = "shortest") -> CalibrationSet:
    """VAR-4: from a rac set decoded for more prompts than the budget needs (e.g. ``token_budget=None``),
    keep the sequences whose decoded trace contains ``close_ids`` (the tokenizer's ids of ``</think>``:
    the reasoning was closed), order them by their number of decode tokens (``rule`` "shortest":
    ascending, "longest": descending; ties in the set's order), and take them in that order until
    ``token_budget`` tokens, the last one cut so the total is exactly the budget (as rac's budget, CAL-*).
    ValueError naming token_budget if the kept sequences hold fewer tokens."""
    _check_set(calib)
    if rule not in ("shortest", "longest"):
        raise ValueError(f"rule must be 'shortest' or 'longest', got {rule!r}")
    if isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget <= 0:
        raise ValueError(f"token_budget must be an int > 0, got {token_budget!r}")
    close_ids = [int(i) for i in close_ids]
    if not close_ids:
        raise ValueError("close_ids must name at least one token id (the encoding of </think>)")
    kept = []
    for i, (ids, lab) in enumerate(zip(calib.sequences, calib.labels)):
        trace = ids[lab == _DECODE]
        if _closes(trace, close_ids):
            kept.append((int(trace.numel()), i))
    kept.sort(key=lambda t: (t[0] if rule == "shortest" else -t[0], t[1]))
    available = sum(calib.sequences[i].numel() for _, i in kept)
    if available < token_budget:
        raise ValueError(f"token_budget={token_budget} exceeds the {available} tokens of the {len(kept)} closed "
                         f"traces of the set ({len(calib)} sequences); decode more prompts")
    seqs, labs, weights, total = [], [], [], 0
    for _, i in kept:
        take = min(int(calib.sequences[i].numel()), token_budget - total)
        seqs.append(calib.sequences[i][:take])
        labs.append(calib.labels[i][:take])
        weights.append(calib.token_weights(i)[:take])
        total += take
        if total == token_budget:
            break
    meta = dict(calib.meta, variant=f"select_{'short' if rule == 'shortest' else 'long'}", selection_rule=rule,
                pool_sequences=len(calib), pool_closed=len(kept), tokens=total, sequences=len(seqs),
                token_budget=token_budget)
    return CalibrationSet(seqs, labs, meta, None, weights if calib.weighted else None)


def check_schedule(schedule) -> list:
    """[(pattern, sparsity)] steps: pattern "unstructured" with 0 <= sparsity < 1, or an N:M string
    (sparsity None); unstructured sparsities non-decreasing; at least one step."""
    if not isinstance(schedule, (list, tuple)) or not schedule:
        raise ValueError(f"schedule must be a non-empty list of (pattern, sparsity) steps, got {schedule!r}")
    steps, last = [], 0.0
    for k, step in enumerate(schedule):
        if not isinstance(step, (list, tuple)) or len(step) != 2:
            raise ValueError(f"schedule[{k}] must be (pattern, sparsity), got {step!r}")
        pattern, sparsity = step
        if pattern == "unstructured":
            if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
                raise ValueError(f"schedule[{k}]: sparsity must be in [0, 1), got {sparsity!r}")
            if sparsity < last:
                raise ValueError(f"schedule[{k}]: sparsity {sparsity} is below the previous step's {last}")
            last = float(sparsity)
        elif not isinstance(pattern, str) or sparsity is not None:
            raise ValueError(f"schedule[{k}]: an N:M step is (\"N:M\", None), got {step!r}")
        steps.append((pattern, sparsity))
    return steps


def regenerate(model, tokenizer, prompts, schedule, *, method, collect=None, compress=None, collect_kwargs=None,
               compress_kwargs=None):
    """VAR-5: for each step k of ``schedule`` ([(pattern, sparsity)], ``check_schedule``): Phase I on the
    model as step k-1 left it (mode "rac": traces decoded by the partly pruned model), then Phase II of
    that model on that set to step k's pattern and sparsity. Prunes ``model`` in place.

    collect, compress: Phase I and II (default: ``rac.reference``'s; ``rac experiment`` passes rac.fast's).
    Returns (model, [compression report per step], [CalibrationSet per step]). One step is rac."""
    steps = check_schedule(schedule)
    if collect is None or compress is None:
        from .calibration import collect_calibration
        from .compress import compress as reference_compress

        collect = collect or collect_calibration
        compress = compress or reference_compress
    collect_kwargs = dict(collect_kwargs or {})
    collect_kwargs.pop("mode", None)
    compress_kwargs = dict(compress_kwargs or {})
    reports, sets = [], []
    for k, (pattern, sparsity) in enumerate(steps):
        calib = collect(model, tokenizer, list(prompts), mode="rac", **collect_kwargs)
        calib.meta = dict(calib.meta, variant="regen", step=k, steps=len(steps),
                          schedule=[list(s) for s in steps])
        model, report = compress(model, calib, method=method, sparsity=sparsity, pattern=pattern,
                                 **compress_kwargs)
        reports.append(report)
        sets.append(calib)
    return model, reports, sets

