"""Sampling z_t ~ pi_theta(. | z_{0:t-1}) (paper Eq. 2 / Eq. 5), reproducibly (spec CAL-7).

The rule, in Hugging Face's order: divide the logits by the temperature T, keep the
top_k highest (ties at the k-th kept), keep the top_p nucleus (the smallest set, by
descending probability, whose mass reaches top_p), then draw one token. T = 0 is greedy:
argmax, ties to the lowest id.

The draw uses the Gumbel-max identity: argmax_i (log p_i + G_i) with G_i = -log(-log u_i)
and u_i uniform is a sample from p. The uniforms come from a counter-based hash of
(seed, stream, step, token id) instead of a stateful generator, so

- a trace depends only on the seed, its stream (the prompt's index) and the logits,
  never on how many other prompts were decoded before it or beside it in a batch;
- the reference (one prompt at a time) and ``rac.fast`` (batched, on a GPU) draw the
  same tokens from the same logits, and so can any port that implements this page.

The hash is ``mix32`` (Wellons' "lowbias32" finaliser, a bijection on 32-bit integers),
computed with int64 tensor arithmetic that is exact on every device.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for 0 <= x < 2^32 held in int64, without overflowing 63 bits:
    x * c = x * c_lo + x * c_hi * 2^16, and only (x * c_hi) mod 2^16 survives the shift."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32: x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16 (mod 2^32)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniforms(seed: int, streams: torch.Tensor, step: int, vocab_size: int) -> torch.Tensor:
    """u[b, v] in (0, 1), float64, on ``streams``' device: a hash of (seed, streams[b], step, v)."""
    device = streams.device
    folded = (int(seed) ^ (int(seed) >> 32)) & _MASK32
    key = mix32(torch.full_like(streams, folded, dtype=torch.int64))
    key = mix32(key ^ (streams.to(torch.int64) & _MASK32))
    key = mix32(key ^ (int(step) & _MASK32))
    ids = torch.arange(vocab_size, device=device, dtype=torch.int64)
    bits = mix32(mix32(key[:, None] ^ ids[None, :]) + 0x9E3779B9)
    return (bits.to(torch.float64) + 0.5) / 2.0**32


def top_k_filter(scores: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the ``top_k`` highest scores of each row (and any tied with the k-th), -inf elsewhere;
    top_k = 0 keeps everything (as Hugging Face's TopKLogitsWarper)."""
    if top_k <= 0 or top_k >= scores.shape[-1]:
        return scores
    kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, float("-inf"))


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering as Hugging Face's TopPLogitsWarper, on probabilities (last dimension):
    sort descending (ties: lower id first) and keep the smallest prefix whose cumulative probability
    is >= top_p, at least one token. Returns ``probs`` with every other entry set to 0 (not
    renormalised). top_p = 1 keeps everything (HF then skips the warper; a float cumsum could
    otherwise reach 1 early)."""
    if top_p >= 1:
        return probs
    sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # probability mass ranked above each token
    keep_sorted = before < top_p
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return torch.where(keep, probs, torch.zeros_like(probs))


def sample_tokens(logits: torch.Tensor, *, temperature: float, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                  streams: torch.Tensor, step: int) -> torch.Tensor:
    """One token per row of ``logits`` [B, vocab]: row b is stream ``streams[b]`` at decode ``step``.

    temperature 0: argmax (ties: lowest id). Otherwise, in float64: scores = logits / T, top-k,
    top-p on softmax(scores), then argmax(scores + Gumbel(u)) over the kept tokens.
    """
    if temperature == 0:
        return torch.argmax(logits, dim=-1)
    scores = logits.detach().to(torch.float64) / temperature
    scores = top_k_filter(scores, top_k)
    if top_p < 1:
        kept = top_p_filter(torch.softmax(scores, dim=-1), top_p) > 0
        scores = scores.masked_fill(~kept, float("-inf"))
    u = uniforms(seed, streams.to(logits.device), step, logits.shape[-1])
    gumbel = -torch.log(-torch.log(u))
    return torch.argmax(scores + gumbel, dim=-1)


def sample_next_token(logits: torch.Tensor, *, temperature: float, top_k: int = 0, top_p: float = 1.0,
                      seed: int = 0, stream: int = 0, step: int = 0) -> int:
    """z_t from one position's logits (Eq. 2 / Eq. 5): ``sample_tokens`` for a single stream."""
    streams = torch.tensor([stream], dtype=torch.int64, device=logits.device)
    row = logits.detach().reshape(1, -1)
    return int(sample_tokens(row, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                             streams=streams, step=step)[0])
