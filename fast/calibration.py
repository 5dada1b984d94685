"""Phase I, fast: batched on-policy trace generation with a KV cache (same sets as the reference).

    collect_calibration(model, tokenizer, prompts, *, mode, ...) -> CalibrationSet

Same arguments, same result as ``rac.reference.collect_calibration`` (spec CAL-*), except
the reference-only ``capture``. What changes is how the traces are decoded:

- many prompts at once, left-padded with an attention mask, through Hugging Face
  ``generate`` (prefill + one batched step per token with a KV cache; per-sequence EOS);
  the reference decodes one prompt, one token, one forward at a time (Algorithm 1 as
  written). Decoding is memory-bound, so a step costs about the same for 1 or 100
  sequences: the saving is roughly the batch size (measured in docs/benchmarks.md).
- sampling is the reference's rule (``rac.reference.sampling``: draws keyed by
  (seed, prompt index, step)), applied to each row of the batch, so the traces are the
  reference's for the same seed, batched or not (CAL-7), up to logits that differ in the
  last float bits between batched and single-sequence forwards.
- ``cache="static"`` asks ``generate`` for a static KV cache (fixed shapes); on CUDA,
  transformers (5.24: ``GenerationMixin._valid_auto_compile_criteria``) then compiles the
  decode step with torch.compile by itself, which is what removes the per-op launch
  overhead of eager decoding (docs/benchmarks.md projects 2.6-5x on an H100; not measured:
  no GPU in this project's runs; the compile itself costs time once per shape).
  ``"dynamic"`` (default) grows the cache and decodes eagerly.
- ``batch_size="auto"``: on CUDA, as many sequences as the KV cache of prompt +
  ``max_new_tokens`` allows in half the free memory (at most 256); on CPU, 16.

The activations are not captured here: Phase II recomputes them with one teacher-forced
pass per block over the finished sequences, which it needs anyway for propagation, and
which equals what decoding computed (CAL-1).

Modes that decode nothing (text, prompt, offpolicy from a file) are tokenisation only and
are delegated to the reference.
"""

from __future__ import annotations

import warnings

import torch

from rac.reference import calibration as ref
from rac.reference.contract.models import context_length, decoder_blocks, eval_mode, text_config
from rac.reference.calibration_set import CalibrationSet
from rac.reference.sampling import sample_tokens

from .distributed import world

#: Upper bound of batch_size="auto" (beyond it a decode step is no longer memory-bound on an H100).
MAX_AUTO_BATCH = 256
#: Sequences per batch on a CPU with batch_size="auto".
CPU_BATCH = 16


def collect_calibration(
    model, tokenizer, prompts, *, mode, max_new_tokens=256, temperature=0.0, top_k=0, top_p=1.0, seed=0,
    token_budget=None, corpus=None, traces=None, trace_model=None, trace_ids=None, window=128, batch_size="auto",
    cache="dynamic", progress=None, check_policy=True,
) -> CalibrationSet:
    """Phase I of Algorithm 1 with batched decoding; see ``rac.reference.collect_calibration``.

    batch_size: prompts decoded together ("auto" or a positive int). cache: "dynamic" or "static".
    """
    generated_offpolicy = mode == "offpolicy" and trace_model is not None and traces is None
    decodes = trace_ids is None and (mode == "rac" or generated_offpolicy)
    if not decodes:  # nothing to decode (traces given as text or token ids): the reference is as fast as anything
        return ref.collect_calibration(
            model, tokenizer, prompts, mode=mode, max_new_tokens=max_new_tokens, temperature=temperature,
            top_k=top_k, top_p=top_p, seed=seed, token_budget=token_budget, corpus=corpus, traces=traces,
            trace_model=trace_model, trace_ids=trace_ids, window=window, progress=progress, check_policy=check_policy,
        )
    ref.check_calibration_options(mode, max_new_tokens, temperature, top_k, top_p, token_budget, window, seed)
    if cache not in ("dynamic", "static"):
        raise ValueError(f"cache must be 'dynamic' or 'static', got {cache!r}")
    ref.check_prompts(prompts)
    decoder = model if mode == "rac" else trace_model
    label = "decode" if mode == "rac" else "offpolicy"
    prompt_ids = [ref.template_prompt(tokenizer, p) for p in prompts]
    ref.check_prompt_lengths(prompt_ids, context_length(model), max_new_tokens, f"max_new_tokens={max_new_tokens}")
    bs = resolve_batch_size(batch_size, decoder, max(p.numel() for p in prompt_ids) + max_new_tokens)
    sampling = dict(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p), seed=seed)
    eos_ids = ref.eos_token_ids(model, tokenizer)
    meta = dict(mode=mode, seed=seed, max_new_tokens=max_new_tokens, temperature=float(temperature),
                top_k=int(top_k), top_p=float(top_p), token_budget=token_budget)
    if mode == "offpolicy":
        meta["trace_source"] = "trace_model"

    rows, total = [], 0
    w = world()
    with eval_mode(model, trace_model):
        with torch.no_grad():
            if w is not None:  # several ranks (DIST-1): the same batches, dealt round-robin, gathered in order
                rows, total, bs = _decode_distributed(w, decoder, prompt_ids, bs, max_new_tokens, eos_ids, cache,
                                                  sampling, label, token_budget, progress)
            for start in range(0, len(prompt_ids), bs) if w is None else ():
                if token_budget is not None and total >= token_budget:
                    break
                streams = list(range(start, min(start + bs, len(prompt_ids))))
                decoded = generate_traces(decoder, [prompt_ids[i] for i in streams], streams, max_new_tokens,
                                          eos_ids=eos_ids, cache=cache, **sampling)
                for i, (tokens, stop) in zip(streams, decoded):
                    if token_budget is not None and total >= token_budget:
                        break
                    ids, labels = ref.labelled((prompt_ids[i], "prompt"), (tokens, label))
                    if token_budget is not None and ids.numel() > token_budget - total:
                        keep = token_budget - total  # the reference stops this trace's decoding here
                        ids, labels, stop = ids[:keep], labels[:keep], "budget"
                    rows.append((ids, labels, stop))
                    total += ids.numel()
                if progress is not None:
                    progress(streams[-1] + 1, len(prompt_ids), f"{total} tokens")
    if token_budget is not None and total < token_budget:
        warnings.warn(
            f"collect_calibration: the data ran out at {total} tokens, short of token_budget={token_budget}",
            UserWarning, stacklevel=2,
        )
    stops = [stop for *_, stop in rows]
    meta.update(tokens=total, sequences=len(rows), eos_token_ids=sorted(eos_ids), batch_size=bs, cache=cache,
                trace_stops={k: stops.count(k) for k in ("eos", "limit", "budget")})
    return CalibrationSet([r[0] for r in rows], [r[1] for r in rows], meta)


def _decode_distributed(w, decoder, prompt_ids, bs, max_new_tokens, eos_ids, cache, sampling, label, token_budget,
                        progress) -> tuple:
    """Phase I on K ranks (DIST-1): the one-process batches (``bs`` prompts in prompt order) are decoded one
    round of K batches at a time, batch j of a round by rank j; every rank gathers every batch's traces and
    applies the token budget in prompt order as the one-process loop does, so all ranks end with its rows.
    A batch decodes the same prompts with the same padding as in one process, and the sampler is keyed by
    (seed, prompt index, step) (CAL-7), so the traces do not depend on K. At most K - 1 batches are decoded
    beyond the budget (the round in which it is reached). Returns (rows, tokens, the batch size used)."""
    from . import distributed

    bs = distributed.broadcast(bs, 0, "Phase I batch size")  # "auto" may differ per GPU: rank 0's for all
    starts = list(range(0, len(prompt_ids), bs))
    rows, total = [], 0
    for first in range(0, len(starts), w.size):
        if token_budget is not None and total >= token_budget:
            break
        mine = first + w.rank
        decoded = None
        if mine < len(starts):
            streams = list(range(starts[mine], min(starts[mine] + bs, len(prompt_ids))))
            decoded = generate_traces(decoder, [prompt_ids[i] for i in streams], streams, max_new_tokens,
                                      eos_ids=eos_ids, cache=cache, **sampling)
        gathered = distributed.all_gather(decoded, f"Phase I traces, batches {first}..")
        for j, batch in enumerate(gathered):
            if batch is None:
                continue
            if token_budget is not None and total >= token_budget:
                break
            start = starts[first + j]
            streams = list(range(start, min(start + bs, len(prompt_ids))))
            for i, (tokens, stop) in zip(streams, batch):
                if token_budget is not None and total >= token_budget:
                    break
                ids, labels = ref.labelled((prompt_ids[i], "prompt"), (tokens, label))
                if token_budget is not None and ids.numel() > token_budget - total:
                    keep = token_budget - total
                    ids, labels, stop = ids[:keep], labels[:keep], "budget"
                rows.append((ids, labels, stop))
                total += ids.numel()
            if progress is not None:
                progress(streams[-1] + 1, len(prompt_ids), f"{total} tokens")
    return rows, total, bs


def resolve_batch_size(batch_size, model, max_length: int) -> int:
    """A positive int as given; "auto": what the KV cache of ``max_length`` tokens per sequence
    allows in half of the free accelerator memory (CUDA), else ``CPU_BATCH``."""
    if batch_size == "auto":
        device = next(model.parameters()).device
        if device.type != "cuda":
            return CPU_BATCH
        free, _ = torch.cuda.mem_get_info(device)
        per_sequence = kv_cache_bytes(model, max_length)
        return int(max(1, min(MAX_AUTO_BATCH, free // 2 // max(per_sequence, 1))))
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")
    return batch_size


def kv_cache_bytes(model, length: int) -> int:
    """Bytes of one sequence's KV cache at ``length`` tokens: 2 (K and V) x blocks x KV heads x head dim."""
    config = text_config(model)
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    itemsize = next(model.parameters()).element_size()
    return 2 * len(decoder_blocks(model)) * heads * head_dim * itemsize * length


class KeyedSampler:
    """A ``generate`` logits processor that draws each row's token by the reference's rule
    (``sample_tokens``, keyed by (seed, stream, step)) and leaves only that token possible, so
    ``generate``'s greedy step picks it."""

    def __init__(self, streams, prompt_width: int, **sampling):
        self.streams = torch.as_tensor(streams, dtype=torch.int64)
        self.prompt_width = prompt_width
        self.sampling = sampling

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_width
        chosen = sample_tokens(scores, streams=self.streams.to(scores.device), step=step, **self.sampling)
        only = torch.full_like(scores, float("-inf"))
        return only.scatter(1, chosen[:, None], 0.0)


def generate_traces(model, prompts, streams, max_new_tokens, *, eos_ids, temperature, top_k, top_p, seed,
                    cache="dynamic") -> list:
    """Decode one batch: prompts (1-D id tensors) left-padded, ``generate`` with a KV cache.

    Returns, per prompt, (generated ids up to and including the first EOS, "eos" | "limit").
    """
    from transformers import GenerationConfig, LogitsProcessorList

    if max_new_tokens == 0:
        return [(torch.zeros(0, dtype=torch.long), "limit") for _ in prompts]
    device = next(model.parameters()).device
    width = max(p.numel() for p in prompts)
    pad = getattr(model.config, "pad_token_id", None)
    pad = 0 if pad is None else pad
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - p.numel():] = p
        mask[row, width - p.numel():] = 1
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad,
        eos_token_id=sorted(eos_ids) or None, cache_implementation="static" if cache == "static" else None,
    )
    processors = LogitsProcessorList()
    if temperature > 0:
        processors.append(KeyedSampler(streams, width, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed))
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                         logits_processor=processors)
    new = out[:, width:].to("cpu")
    results = []
    for row in new:
        hits = torch.isin(row, torch.tensor(sorted(eos_ids), dtype=torch.long)).nonzero().flatten()
        if hits.numel():
            results.append((row[: int(hits[0]) + 1].clone(), "eos"))
        else:
            results.append((row.clone(), "limit"))
    return results
