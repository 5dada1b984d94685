"""Phase I, fast: batched on-policy trace generation with a KV cache (same sets as the reference).

    collect_calibration(model, tokenizer, prompts, *, mode, ...) -> CalibrationSet

Same arguments, same result as ``rac.reference.collect_calibration`` (spec CAL-*), except
the reference-only ``capture``. What changes is how the traces are decoded:

- many prompts at once, left-padded with an attention mask, by ``decode_batch``: one prefill,
  then one batched forward per token with a KV cache, per-sequence EOS; the reference decodes
  one prompt, one token, one forward at a time (Algorithm 1 as written). A decode step costs
  far less than ``batch`` single-sequence steps (memory- or overhead-bound), so the saving
  approaches the batch size. Measured on the qwen3 fixture (16 prompts x 64 greedy tokens, one
  batch; ``cases_phase1.py --rounds 7``, now ``bench_compare.py phase1 --threads 1 --rounds 7``, three runs, 2-core AMD
  EPYC, 1 torch thread, 2026-12-02, the machine loaded by other benchmarks, 1-minute load 2.2-2.5):
  11.3-13.9x the reference's generated tokens per second best against best; per round (reference
  seconds / fast seconds, interleaved) min 9.6-10.2x, median 11.9-13.2x, max 13.3-16.9x; the same
  traces. The ``generate`` loop this module used before, run beside them (the previous module,
  ``harness.compare`` three ways, 5 rounds, load 2.4-2.5), had a per-round median of 9.8x where
  ``decode_batch`` had 12.3x; ``decode_batch`` says what each of its parts saves.
- sampling is the reference's rule (``rac.reference.sampling``: draws keyed by
  (seed, prompt index, step)), applied to each row of the batch, so the traces are the
  reference's for the same seed, batched or not (CAL-7), up to logits that differ in the
  last float bits between batched and single-sequence forwards.
- ``cache="static"`` hands the batch to Hugging Face ``generate`` with a static KV cache (fixed
  shapes) and ``KeyedSampler``; on CUDA, transformers (5.24:
  ``GenerationMixin._valid_auto_compile_criteria``) then compiles the decode step with
  torch.compile by itself, which is what removes the per-op launch overhead of eager decoding
  (docs/benchmarks.md projects 2.6-5x on an H100; not measured: no GPU in this project's runs;
  the compile itself costs time once per shape). ``"dynamic"`` (default) is ``decode_batch``,
  eager, its cache growing into buffers allocated once per batch.
- ``batch_size="auto"``: on CUDA, as many sequences as the KV cache of prompt +
  ``max_new_tokens`` allows in half the free memory (at most 256); on CPU, 16.

The activations are not captured here: Phase II recomputes them with one teacher-forced
pass per block over the finished sequences, which it needs anyway for propagation, and
which equals what decoding computed (CAL-1).

Modes that decode nothing (text, prompt, offpolicy from a file) are tokenisation only and
are delegated to the reference.
"""

from __future__ import annotations

import inspect
import warnings
from functools import lru_cache

import torch

from rac.reference import calibration as ref
from rac.reference.contract.models import cache_argument, context_length, decoder_blocks, eval_mode, text_config
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
    ``generate``'s greedy step picks it (the ``cache="static"`` path)."""

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
    """Decode one batch: prompts (1-D id tensors) left-padded, a KV cache, one batched forward per token.

    ``cache="dynamic"``: ``decode_batch`` (this module's own loop); ``"static"``: Hugging Face
    ``generate`` with a static cache (which compiles the decode step on CUDA by itself).
    Returns, per prompt, (generated ids up to and including the first EOS, "eos" | "limit").
    """
    if max_new_tokens == 0:
        return [(torch.zeros(0, dtype=torch.long), "limit") for _ in prompts]
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    if cache == "static":
        new = hf_generate(model, prompts, streams, max_new_tokens, eos_ids, sampling, static=True)
    else:
        new = decode_batch(model, prompts, streams, max_new_tokens, eos_ids, sampling)
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long)
    results = []
    for row in new:
        hits = torch.isin(row, eos).nonzero().flatten()
        if hits.numel():
            results.append((row[: int(hits[0]) + 1].clone(), "eos"))
        else:
            results.append((row.clone(), "limit"))
    return results


def _left_padded(prompts, pad: int) -> tuple:
    """(ids, attention mask) [batch, widest prompt], int64, each prompt flush right (left padding)."""
    width = max(p.numel() for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - p.numel():] = p
        mask[row, width - p.numel():] = 1
    return ids, mask


def _pad_id(model) -> int:
    pad = getattr(model.config, "pad_token_id", None)
    return 0 if pad is None else int(pad)


def hf_generate(model, prompts, streams, max_new_tokens, eos_ids, sampling, *, static: bool) -> torch.Tensor:
    """Hugging Face ``generate`` on the left-padded batch, ``KeyedSampler`` drawing the tokens, with a static
    KV cache or (static=False: what ``cache="dynamic"`` ran before ``decode_batch``, kept for
    ``conformance/benchmarks/probe_phase1.py``) its default one. Returns [batch, tokens decoded] ids on the
    CPU (pad after a row's EOS)."""
    from transformers import GenerationConfig, LogitsProcessorList

    device = next(model.parameters()).device
    pad = _pad_id(model)
    ids, mask = _left_padded(prompts, pad)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad,
        eos_token_id=sorted(eos_ids) or None, cache_implementation="static" if static else None,
    )
    processors = LogitsProcessorList()
    if sampling["temperature"] > 0:
        processors.append(KeyedSampler(streams, ids.shape[1], **sampling))
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                         logits_processor=processors)
    return out[:, ids.shape[1]:].to("cpu")


def decode_batch(model, prompts, streams, max_new_tokens, eos_ids, sampling) -> torch.Tensor:
    """Prefill the left-padded batch, then one forward of the batch's last tokens per step with the
    KV cache; token ``step`` of row b is ``sample_tokens`` of its logits keyed by (seed, streams[b],
    step) (argmax at temperature 0), as ``generate`` with ``KeyedSampler`` picks it. A row that has
    emitted an EOS id is fed the pad id from then on (as ``generate`` does); the loop stops when
    every row has one or after ``max_new_tokens``. Positions are ``generate``'s (cumulative count of
    real tokens - 1, so a row's first real token is at 0 whatever its padding).
    Returns [batch, tokens decoded] ids on the CPU (pad after a row's EOS).

    What it saves over ``generate`` (``hf_generate(static=False)``), same traces. Measured with
    ``python conformance/benchmarks/probe_phase1.py 15`` (16 qwen3-fixture prompts x 64 greedy
    tokens, one batch; each part switched on in turn, the five variants interleaved round by round;
    2-core AMD EPYC, 1 torch thread, 2026-12-02, 1-minute load 1.4-2.0 from other benchmarks): the
    median over the rounds of generate's seconds / the variant's, two runs:

    - the loop itself, 1.12-1.17x: ``generate``'s per-step bookkeeping goes (logits processors and
      stopping criteria, model-input preparation, a new 2-D mask and position tensor per step by
      concatenation);
    - with the 4-D padding mask, 1.26-1.27x: a decode step's mask ([batch, 1, 1, length] booleans,
      what transformers' ``sdpa_mask`` builds) is built once and sliced per step, where the model
      would rebuild it from the 2-D mask in every forward (``create_causal_mask``); only for models
      whose every layer is plain causal attention through SDPA (``_plain_sdpa``), else the 2-D mask
      goes in as before; no mask at all when no prompt is padded (as transformers does);
    - with the preallocated KV cache, 1.32x (both runs): the cache grows into buffers allocated once
      for prompt + ``max_new_tokens`` (``_preallocated_cache``), where ``DynamicCache`` concatenates
      (copies) every layer's whole cache at every step. The same probe times one layer's key update
      (two runs): 26-32 us (cat) against 8.6-9.5 us (in-place write) at the fixture's
      [16, 2, 128, 32], 56-67 ms against 9-12 us at a Qwen2-7B-like [16, 4, 2048, 128] float32, where
      the copy grows with the trace;
    - under ``torch.inference_mode`` too, 1.36-1.48x: no version counters or view tracking per op.
      Not when the model carries accelerate hooks (they move or create weights during a forward, and
      a tensor made in inference mode cannot be changed in place afterwards, as Phase II changes
      weights), then ``torch.no_grad`` as before.
    """
    device = next(model.parameters()).device
    pad = _pad_id(model)
    ids, mask = _left_padded(prompts, pad)
    batch, width = ids.shape
    total = width + max_new_tokens
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    padded = not bool(mask.all())
    plain = _plain_sdpa(model)
    key = cache_argument(type(model))
    keep = _logits_to_keep_argument(type(model))
    inference = not any(hasattr(m, "_hf_hook") for m in model.modules())
    with torch.inference_mode() if inference else torch.no_grad():
        ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
        kv = _preallocated_cache(model, total) if plain else None
        # own: the preallocated cache, extended in place; else the model makes one, read back from every
        # output (older transformers return a new legacy tuple each time)
        own = kv is not None
        kwargs = {key: kv} if own else {}
        if keep is not None:
            kwargs[keep] = 1
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs)
        if not padded:
            masks = None
        elif plain:
            masks = torch.ones((batch, 1, 1, total), dtype=torch.bool, device=device)
            masks[:, 0, 0, :width] = mask.bool()
        else:
            masks = torch.ones((batch, total), dtype=torch.long, device=device)
            masks[:, :width] = mask
        streams = torch.as_tensor(streams, dtype=torch.int64, device=device)
        eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
        tokens = torch.full((batch, max_new_tokens), pad, dtype=torch.long, device=device)
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        position = positions[:, -1:]
        steps = max_new_tokens
        for step in range(max_new_tokens):
            z = sample_tokens(out.logits[:, -1], streams=streams, step=step, **sampling)
            z = z.masked_fill(done, pad)
            tokens[:, step] = z
            done = done | torch.isin(z, eos)
            if step + 1 == max_new_tokens or bool(done.all()):
                steps = step + 1
                break
            position = position + 1
            if not own:
                kv = getattr(out, "cache", None)
                kv = getattr(out, "past_key_values", None) if kv is None else kv
            step_mask = None if masks is None else masks[..., : width + step + 1]
            out = model(input_ids=z[:, None], attention_mask=step_mask, position_ids=position, use_cache=True,
                        **{key: kv})
        new = tokens[:, :steps].to("cpu")
    return new.clone()  # outside inference mode: an ordinary tensor


def _plain_sdpa(model) -> bool:
    """Whether every decoder layer is plain causal attention through SDPA (no sliding window, chunks,
    linear attention or shared KV): then a decode step's mask is the [batch, 1, 1, length] padding
    mask whatever the layer, and the model takes it as given (a 4-D mask is used as is)."""
    config = text_config(model)
    if getattr(model.config, "_attn_implementation", None) != "sdpa" or getattr(config, "is_encoder_decoder", False):
        return False
    if not getattr(config, "is_causal", True) or getattr(config, "kv_sharing_modes", None) is not None:
        return False
    types = getattr(config, "layer_types", None)
    if types is not None:
        return all(t == "full_attention" for t in types)
    return getattr(config, "sliding_window", None) is None and getattr(config, "attention_chunk_size", None) is None


@lru_cache(maxsize=None)
def _logits_to_keep_argument(model_class: type):
    """The keyword that limits the LM head to the last positions (None: the model has none)."""
    params = inspect.signature(model_class.forward).parameters
    return next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)


@lru_cache(maxsize=None)
def _preallocated_layer_class():
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        """A ``DynamicLayer`` whose keys and values are views of buffers allocated once for ``capacity``
        positions: an update writes the new positions in place instead of concatenating."""

        def __init__(self, capacity: int):
            super().__init__()
            self.capacity = capacity
            self.length = 0

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                batch, heads, _, _ = key_states.shape
                self._keys = key_states.new_empty((batch, heads, self.capacity, key_states.shape[-1]))
                self._values = value_states.new_empty((batch, value_states.shape[1], self.capacity,
                                                       value_states.shape[-1]))
            start, end = self.length, self.length + key_states.shape[-2]
            if end > self.capacity:
                raise RuntimeError(f"KV cache of {self.capacity} positions asked for {end}")
            self._keys[:, :, start:end] = key_states
            self._values[:, :, start:end] = value_states
            self.length = end
            self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
            return self.keys, self.values

    return PreallocatedLayer


def _preallocated_cache(model, capacity: int):
    """A ``DynamicCache`` of the model whose layers are ``PreallocatedLayer``s of ``capacity`` positions,
    or None (the model then makes its own cache) where the installed transformers has no such layers
    or the model's cache is not all plain ``DynamicLayer``s."""
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer

        cache = DynamicCache(config=model.config)
        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            return None
        layer_class = _preallocated_layer_class()
        cache.layers = [layer_class(capacity) for _ in layers]
        return cache
    except (ImportError, TypeError, AttributeError, ValueError):
        return None
