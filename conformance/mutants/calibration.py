"""Calibration-level mutants: collect_calibration (Phase I) with one plausible bug (SELF-1).

Each wraps ``rac.reference.collect_calibration`` and changes one thing, the way
a port could get Phase I wrong without any crash.
"""

from __future__ import annotations

import copy

import torch

from rac.reference import LABELS, collect_calibration

from . import Mutant, reference_port

PROMPT, DECODE = LABELS.index("prompt"), LABELS.index("decode")


def _labels_swapped(model, tokenizer, prompts, **kw):
    """Prompt and decode labels the wrong way round (so the report's prompt/decode split is swapped)."""
    cs = collect_calibration(model, tokenizer, prompts, **kw)
    for lab in cs.labels:
        p, d = lab == PROMPT, lab == DECODE
        lab[p], lab[d] = DECODE, PROMPT
    return cs


def _perturbed(model):
    """A copy of the model with noise on the LM head (a stale checkpoint, another revision, ...)."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = other.lm_head.weight
        w.add_(torch.randn(w.shape, generator=g).to(w.dtype) * float(w.std()))
    return other


def _traces_from_wrong_model(model, tokenizer, prompts, *, mode, **kw):
    """On-policy traces sampled from another model than the one being pruned (only the tokens change)."""
    if mode != "rac":
        return collect_calibration(model, tokenizer, prompts, mode=mode, **kw)
    return collect_calibration(_perturbed(model), tokenizer, prompts, mode=mode, **kw)


def _prompts_sorted_by_length(model, tokenizer, prompts, **kw):
    """Prompts sorted by length for batching and never put back in order: sequence i is not prompt i."""
    if prompts is not None:
        prompts = sorted(prompts, key=len)
    return collect_calibration(model, tokenizer, prompts, **kw)


def _seed_ignored(model, tokenizer, prompts, **kw):
    """The seed argument is not passed on (a fixed seed): every run samples the same traces."""
    kw["seed"] = 0
    return collect_calibration(model, tokenizer, prompts, **kw)


def _budget_off_by_one(model, tokenizer, prompts, **kw):
    """token_budget + 1 tokens (an inclusive bound where an exclusive one belongs)."""
    if kw.get("token_budget") is not None:
        kw["token_budget"] += 1
    return collect_calibration(model, tokenizer, prompts, **kw)


def _eos_dropped(model, tokenizer, prompts, **kw):
    """A trace that ended at EOS loses it (decoded with skip_special_tokens, as the authors' code does)."""
    cs = collect_calibration(model, tokenizer, prompts, **kw)
    eos = set(cs.meta.get("eos_token_ids", ()))
    for i, (ids, lab) in enumerate(zip(cs.sequences, cs.labels)):
        if ids.numel() > 1 and int(lab[-1]) != PROMPT and int(ids[-1]) in eos:
            cs.sequences[i], cs.labels[i] = ids[:-1], lab[:-1]
    return cs


def _trace_model_ignored(model, tokenizer, prompts, *, mode, trace_model=None, **kw):
    """offpolicy with a trace_model decodes with the model itself."""
    if trace_model is not None:
        trace_model = model
    return collect_calibration(model, tokenizer, prompts, mode=mode, trace_model=trace_model, **kw)


def _left_in_eval_mode(model, tokenizer, prompts, **kw):
    """Puts the model in eval mode and never restores its training flag."""
    cs = collect_calibration(model, tokenizer, prompts, **kw)
    model.eval()
    return cs


def _top_p_clamped(model, tokenizer, prompts, **kw):
    """An out-of-range top_p is clamped into (0, 1] instead of being refused."""
    if "top_p" in kw and not 0 < kw["top_p"] <= 1:
        kw["top_p"] = min(max(kw["top_p"], 1e-6), 1.0)
    return collect_calibration(model, tokenizer, prompts, **kw)


def _m(name, fn, ids, bug):
    return Mutant(reference_port(name, collect_calibration=fn), "calibration", ids, bug)


MUTANTS = {
    "cal_labels_swapped": _m("cal_labels_swapped", _labels_swapped, {"CAL-4"}, "prompt and decode labels swapped"),
    "cal_traces_from_wrong_model": _m("cal_traces_from_wrong_model", _traces_from_wrong_model, {"CAL-2"},
                                      "on-policy traces sampled from another (perturbed) model"),
    "cal_prompts_sorted_by_length": _m("cal_prompts_sorted_by_length", _prompts_sorted_by_length, {"CAL-2", "CAL-4"},
                                       "prompts reordered (sorted by length) and not put back"),
    "cal_seed_ignored": _m("cal_seed_ignored", _seed_ignored, {"CAL-6"}, "sampling seed ignored"),
    "cal_budget_off_by_one": _m("cal_budget_off_by_one", _budget_off_by_one, {"CAL-5"}, "token budget off by one"),
    "cal_eos_dropped": _m("cal_eos_dropped", _eos_dropped, {"CAL-2", "CAL-4"}, "EOS ending a trace dropped"),
    "cal_trace_model_ignored": _m("cal_trace_model_ignored", _trace_model_ignored, {"CAL-8"},
                                  "off-policy traces decoded by the pruned model, not trace_model"),
    "cal_left_in_eval_mode": _m("cal_left_in_eval_mode", _left_in_eval_mode, {"CAL-10"}, "training flag not restored"),
    "cal_top_p_clamped": _m("cal_top_p_clamped", _top_p_clamped, {"CAL-9"}, "bad top_p clamped, not refused"),
}

globals().update({name: m.port for name, m in MUTANTS.items()})
