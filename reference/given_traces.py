"""Traces made elsewhere, as token ids: Phase I from a serving engine's output (spec CAL-11, CAL-12).

Decoding a million calibration tokens is a serving engine's job (vLLM, SGLang); what it produces is
token ids. They enter Phase I as they are, never decoded to text and re-tokenised (which does not
round-trip):

    collect_calibration(model, tokenizer, prompts, mode="rac" | "offpolicy", trace_ids=[GivenTrace, ...])

Each ``GivenTrace`` holds the generated ids and, optionally, the templated prompt's ids the engine
was given; when both a problem text and prompt ids are given they must be the model's own chat
template of the problem (else the engine was prompted differently, and the calibration would not
be the model's). Labels: ``decode`` for mode "rac" (the traces claim to be the model's own),
``offpolicy`` otherwise.

The on-policy claim of mode "rac" is checked where it can be (``check_on_policy``): greedy traces
are replayed teacher-forced on a sample and must be the model's argmax token for token (to the
agreement ``GREEDY_AGREEMENT``: an engine in another dtype may break near-ties differently);
sampled traces cannot be replayed, so their mean log-probability under the model is reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: Greedy traces claimed on-policy must match the model's argmax at this fraction of positions at least.
GREEDY_AGREEMENT = 0.95
#: Sequences replayed by the on-policy check.
CHECK_SAMPLE = 8


@dataclass
class GivenTrace:
    """One trace from elsewhere: generated ids (1-D int64) and, optionally, the templated prompt's ids."""

    output_ids: torch.Tensor
    prompt_ids: torch.Tensor | None = None

    def __post_init__(self):
        for name in ("output_ids", "prompt_ids"):
            value = getattr(self, name)
            if value is None:
                continue
            value = torch.as_tensor(value)
            if value.ndim != 1 or value.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"{name} must be a 1-D sequence of integer token ids, got {tuple(value.shape)} "
                                 f"{value.dtype}")
            setattr(self, name, value.to(torch.long))


def prompt_and_trace(tokenizer, problem: str | None, given: GivenTrace, index: int, vocab: int, template):
    """(prompt ids, trace ids) of prompt ``index``; ValueError naming it when the ids are out of the vocabulary
    or the given prompt ids are not the chat template of the problem (``template(tokenizer, problem)``)."""
    for name, ids in (("output_ids", given.output_ids), ("prompt_ids", given.prompt_ids)):
        if ids is not None and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise ValueError(f"trace_ids[{index}].{name} holds ids outside the model's vocabulary [0, {vocab})")
    if problem:
        templated = template(tokenizer, problem)
        if given.prompt_ids is not None and not torch.equal(given.prompt_ids, templated):
            n = min(templated.numel(), given.prompt_ids.numel())
            diff = next((i for i in range(n) if int(templated[i]) != int(given.prompt_ids[i])), n)
            raise ValueError(
                f"trace_ids[{index}].prompt_ids are not the model's chat template of the problem (they differ at "
                f"position {diff} of {templated.numel()}): the engine was prompted differently"
            )
        return templated, given.output_ids
    if given.prompt_ids is None:
        raise ValueError(f"trace_ids[{index}] has neither a problem text nor prompt_ids")
    return given.prompt_ids, given.output_ids


def check_on_policy(model, sequences: list, prompt_lengths: list, *, temperature: float, sample: int = CHECK_SAMPLE):
    """What can be checked of an on-policy claim, on the first ``sample`` sequences (teacher-forced):

    greedy (temperature 0): the fraction of generated tokens that are the model's argmax given what came
    before; ValueError when it is below GREEDY_AGREEMENT. Sampled: the mean log-probability per generated
    token under the model (nothing to fail: a sample can take any token the sampler allows).
    """
    agree, total, logprob = 0, 0, 0.0
    for ids, n_prompt in list(zip(sequences, prompt_lengths))[:sample]:
        if ids.numel() <= n_prompt:
            continue
        logits = model(input_ids=ids.to(model.device)[None], use_cache=False).logits[0].float()
        predicted = logits[n_prompt - 1 : ids.numel() - 1]
        actual = ids[n_prompt:].to(predicted.device)
        agree += int((predicted.argmax(-1) == actual).sum())
        logprob += float(torch.log_softmax(predicted, -1).gather(1, actual[:, None]).sum())
        total += int(actual.numel())
    result = {"sequences_checked": min(sample, len(sequences)), "tokens_checked": total,
              "mean_logprob": logprob / total if total else math.nan}
    if temperature == 0:
        result["greedy_agreement"] = agree / total if total else math.nan
        if total and agree / total < GREEDY_AGREEMENT:
            raise ValueError(
                f"trace_ids claimed on-policy (mode 'rac', greedy) agree with the model's own greedy choice at only "
                f"{agree / total:.3f} of {total} generated tokens (at least {GREEDY_AGREEMENT} expected): they are "
                "not this model's traces; use mode 'offpolicy'"
            )
    return result
