"""Phase II of Algorithm 1 on a Hugging Face causal LM: layer-wise compression (spec P2-*).

    for each decoder block l, in order:                            (Alg. 1, line 8)
        H = sum_t x_t x_t^T over the calibration tokens entering   (line 9, Eq. 7; one H per distinct input)
            each target linear of the block
        W_hat = prune_layer(W, H, ...)                             (line 10)
        propagate: the next block's inputs are
            "sequential": this block's outputs after pruning       (SparseGPT's practice)
            "dense":      the dense model's own activations        (Algorithm 1 as written)

Inside a block every target linear sees the block's inputs before any of the
block's linears is pruned (one pass for all Hessians, as the original
SparseGPT scripts do). H is kept per token source (prompt, decode, ...) so the
report can give the objective on prompt tokens and on decode tokens separately
(the paper's Figure 2 story).

The reference holds everything in memory: the dense inputs of every block for
every calibration token, and float64 Hessians. It is meant for the tiny models
of the suite and for reading; ``rac.fast.compress`` streams.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .calibration_set import LABELS
from .contract.models import decoder_blocks
from .contract.registry import check_request
from .contract.validate import check_choice
from .objective import row_objectives
from .prune import prune_layer

PROPAGATIONS = ("sequential", "dense")

#: The paper's scopes (Table 6): a third is max(1, L // 3) blocks, counted in decoder blocks.
BLOCK_SCOPES = ("all", "first_third", "last_third", "first_last_third")


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once what it needed was captured."""


# --------------------------------------------------------------------------- scope


def resolve_blocks(spec, num_blocks: int) -> list:
    """Blocks in scope: None/"all", a list of indices, or the paper's scopes "first_third",
    "last_third", "first_last_third" (a third = max(1, num_blocks // 3) blocks)."""
    third = max(1, num_blocks // 3)
    named = {
        "all": list(range(num_blocks)),
        "first_third": list(range(third)),
        "last_third": list(range(num_blocks - third, num_blocks)),
        "first_last_third": sorted(set(range(third)) | set(range(num_blocks - third, num_blocks))),
    }
    if spec is None:
        return named["all"]
    if isinstance(spec, str):
        if spec not in named:
            raise ValueError(f"blocks must be a list of block indices or one of {list(BLOCK_SCOPES)}, got {spec!r}")
        return named[spec]
    try:
        indices = sorted({int(i) for i in spec})
    except (TypeError, ValueError):
        raise ValueError(
            f"blocks must be a list of block indices or one of {list(BLOCK_SCOPES)}, got {spec!r}"
        ) from None
    bad = [i for i in indices if not 0 <= i < num_blocks]
    if bad or not indices:
        raise ValueError(
            f"blocks must be indices in [0, {num_blocks}) (the model has {num_blocks} blocks), got {list(spec)!r}"
        )
    return indices


def target_linears(block: torch.nn.Module, targets) -> dict:
    """name -> nn.Linear inside one block that are pruned.

    targets None: every Linear of the block (q, k, v, o, gate, up, down). Otherwise a list of
    full names ("mlp.down_proj"), last components ("q_proj") or first components ("mlp",
    "self_attn"). Embeddings, norms and the LM head are never inside a block, so never targets.
    """
    linears = {n: m for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
    if targets is None:
        return linears
    if isinstance(targets, str) or not all(isinstance(t, str) for t in targets):
        raise ValueError(
            f"targets must be a list of module names or kinds (e.g. ['mlp'] or ['q_proj']), got {targets!r}"
        )
    chosen = {
        n: m for n, m in linears.items() if any(n == t or n.endswith("." + t) or n.split(".")[0] == t for t in targets)
    }
    if not chosen:
        raise ValueError(
            f"targets {list(targets)!r} match no linear layer of the decoder blocks; they have {sorted(linears)}"
        )
    return chosen


# --------------------------------------------------------------------------- calibration batches


@dataclass
class Batch:
    """Right-padded token ids, the attention mask (1 = real token) and per-token source labels."""

    ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor | None = None  # float64 [B, T], each token's w_t in H (VAR-1); None: all 1


def make_batches(calibration, batch_size: int, pad_id: int) -> list:
    """Sequences in order, ``batch_size`` at a time, right-padded. Padding positions get attention 0
    (and, causal attention being what it is, real tokens never see them) and never reach H (P2-4)."""
    batches = []
    for start in range(0, len(calibration.sequences), batch_size):
        seqs = calibration.sequences[start : start + batch_size]
        labs = calibration.labels[start : start + batch_size]
        width = max(int(s.numel()) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        labels = torch.full((len(seqs), width), -1, dtype=torch.long)  # -1: padding, no source
        weights = torch.zeros((len(seqs), width), dtype=torch.float64) if calibration_weighted(calibration) else None
        for row, (s, lab) in enumerate(zip(seqs, labs)):
            ids[row, : s.numel()] = s
            mask[row, : s.numel()] = 1
            labels[row, : s.numel()] = lab
            if weights is not None:
                weights[row, : s.numel()] = calibration.token_weights(start + row)
        batches.append(Batch(ids, mask, labels, weights))
    return batches


def calibration_weighted(calibration) -> bool:
    """True when some token's weight in H is not 1 (a set from ``rac.reference.variants``, VAR-1)."""
    return bool(getattr(calibration, "weighted", False))


def capture_block_inputs(model, blocks, batch: Batch, last: int) -> list:
    """One dense forward up to block ``last``; per block, (its input hidden states, its keyword arguments).

    x^(l-1) of Eq. 4 for every token of the batch. The keyword arguments (attention mask,
    rotary embeddings, ...) are kept to run each block on its own later, so no
    architecture-specific code is needed.
    """
    captured = [None] * (last + 1)

    def make_hook(index):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            captured[index] = (hidden.detach().clone(), rest)
            if index == last:
                raise _StopForward

        return hook

    handles = [blocks[i].register_forward_pre_hook(make_hook(i), with_kwargs=True) for i in range(last + 1)]
    try:
        model(
            input_ids=batch.ids.to(model.device), attention_mask=batch.attention_mask.to(model.device), use_cache=False
        )
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return captured


def run_block(block, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """f_l of Eq. 4: the block's output hidden states (tuple outputs of older transformers unwrapped)."""
    out = block(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


# --------------------------------------------------------------------------- Hessians (Eq. 7)


class InputGroups:
    """Which target linears of a block read the very same input tensor (q/k/v; gate/up) (P2-3).

    The groups are found on the first batch: a linear whose input *is* (same tensor object)
    the input of an earlier linear of that batch joins its group, led by that earlier linear.
    The inputs seen in a batch are held until the next batch, so a freed tensor's memory
    cannot be reused for another input and fool the identity test.
    """

    def __init__(self, linears: dict):
        self.linears = linears
        self.group_of: dict = {}  # linear name -> leader name (the first linear that saw that input)
        self._seen: list = []  # (input tensor, leader) of the current batch; holds the tensors alive

    def new_batch(self) -> None:
        self._seen = []

    def leader(self, name: str, x) -> str | None:
        """The leader of ``name``'s group, or None when ``name`` itself leads it and ``x`` is new to the batch."""
        if name not in self.group_of:  # grouping decided on the first batch
            same = [leader for seen, leader in self._seen if seen is x]
            self.group_of[name] = same[0] if same else name
        if self.group_of[name] == name:
            self._seen.append((x, name))
            return None
        return self.group_of[name]

    def groups(self) -> dict:
        """leader -> [linear names] in the block's order."""
        out: dict = {}
        for name in self.linears:
            out.setdefault(self.group_of[name], []).append(name)
        return out


class BlockHessians:
    """H per token source for each distinct input of one block's target linears (P2-3, P2-4), float64.

    ``hook(name)`` is a forward pre-hook for linear ``name``; the leader of each ``InputGroups``
    group accumulates H_label = sum over the real tokens of that label of x_t x_t^T.
    """

    def __init__(self, block_index: int, linears: dict):
        self.block_index = block_index
        self.inputs = InputGroups(linears)
        self.H: dict = {}  # leader -> {label code: float64 H}
        self.tokens: dict = {}  # label code -> number of tokens
        self._labels = None
        self._weights = None

    @property
    def group_of(self) -> dict:
        return self.inputs.group_of

    def set_batch(self, batch: Batch) -> None:
        self._labels = batch.labels.to("cpu")
        self._weights = None if batch.weights is None else batch.weights.to("cpu", torch.float64)
        self.inputs.new_batch()
        for code in range(len(LABELS)):
            self.tokens[code] = self.tokens.get(code, 0) + int((self._labels == code).sum())

    def hook(self, name):
        def fn(module, args):
            x = args[0]
            if self.inputs.leader(name, x) is None:
                self.accumulate(name, x)

        return fn

    def accumulate(self, leader: str, x: torch.Tensor) -> None:
        """H_label += sum over the real (non-padding) tokens of that label of w_t x_t x_t^T (w_t = 1 unless the
        set has weights, VAR-1), in float64."""
        x = x.detach().to("cpu", torch.float64)
        if not bool(torch.isfinite(x[self._labels >= 0]).all()):
            raise FloatingPointError(nonfinite_input_message(self.block_index, leader))
        per_label = self.H.setdefault(leader, {})
        for code in range(len(LABELS)):
            X = x[self._labels == code]  # (tokens of that source, in)
            if X.shape[0]:
                if self._weights is None:
                    per_label[code] = per_label.get(code, 0) + X.T @ X
                else:  # H_label = sum_t w_t x_t x_t^T (VAR-1)
                    w = self._weights[self._labels == code]
                    per_label[code] = per_label.get(code, 0) + (X * w.unsqueeze(1)).T @ X

    def hessians(self, name: str) -> dict:
        """{label: H} for the input of linear ``name`` (labels with no tokens omitted)."""
        return {LABELS[c]: h for c, h in self.H.get(self.group_of[name], {}).items()}


def nonfinite_input_message(block_index: int, module: str) -> str:
    """The error raised when a target linear's input holds NaN or Inf (P2-9: never pruned from garbage)."""
    return (
        f"block {block_index}, module {module}: its input holds NaN or Inf (first seen here); "
        "the calibration forward overflowed (e.g. float16): load the model in bfloat16 or float32"
    )


# --------------------------------------------------------------------------- Phase II


def check_compress_arguments(
    model,
    *,
    method,
    sparsity=None,
    pattern="unstructured",
    propagation="sequential",
    targets=None,
    blocks=None,
    batch_size=1,
    **options,
) -> dict:
    """Check a Phase II request against the model without touching it: {block: {name: linear}} in scope.

    Every target linear's pattern, sparsity and options are validated (e.g. N:M needs its
    in_features divisible by M), so ``rac prune`` can call this before spending a Phase I,
    and ``compress`` fails before the first weight changes (P2-9).
    """
    check_choice(propagation, PROPAGATIONS, "propagation")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    all_blocks = decoder_blocks(model)
    in_scope = resolve_blocks(blocks, len(all_blocks))
    targeted = {i: target_linears(all_blocks[i], targets) for i in in_scope}
    for index, linears in targeted.items():
        for name, lin in linears.items():
            try:
                check_request(method, sparsity, pattern, lin.in_features, options)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"block {index}, module {name} ({lin.in_features} inputs): {exc}") from None
    return targeted


def compress(
    model,
    calibration,
    *,
    method: str,
    sparsity=None,
    pattern: str = "unstructured",
    propagation: str = "sequential",
    targets=None,
    blocks=None,
    batch_size: int = 1,
    progress=None,
    **options,
):
    """Prune ``model`` in place, block by block (Algorithm 1, Phase II); returns (model, report).

    calibration: a ``CalibrationSet`` (``collect_calibration``): token sequences, a source label per token.
    method, sparsity, pattern, options: as ``prune_layer`` (options such as blocksize, dampening).
    propagation: "sequential" (block inputs from the already-pruned blocks) or "dense".
    targets: module names or kinds (default: every linear of every decoder block).
    blocks: indices or "first_third" / "last_third" / "first_last_third" (default: all).
    batch_size: sequences per forward (right-padded; padding never reaches H).
    progress: optional callable(done, total, description).

    Every argument is checked before any weight changes; if anything fails midway
    (e.g. NaN activations), the weights already pruned are restored and the error is raised.
    """
    check_calibration(calibration)
    targeted = check_compress_arguments(
        model,
        method=method,
        sparsity=sparsity,
        pattern=pattern,
        propagation=propagation,
        targets=targets,
        blocks=blocks,
        batch_size=batch_size,
        **options,
    )
    all_blocks = decoder_blocks(model)
    in_scope = sorted(targeted)
    pad_id = getattr(model.config, "pad_token_id", None)
    batches = make_batches(calibration, batch_size, 0 if pad_id is None else pad_id)
    report = {
        "implementation": "rac.reference",
        "method": method,
        "pattern": pattern,
        "sparsity": sparsity,
        "propagation": propagation,
        "options": options,
        "blocks": in_scope,
        "targets": None if targets is None else list(targets),
        "calibration": calibration_summary(calibration),
        "layers": [],
    }
    originals = {}  # linear -> its dense weight, to restore if anything fails
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    try:
        with torch.no_grad():
            report["layers"] = _compress_blocks(
                model,
                all_blocks,
                targeted,
                batches,
                propagation,
                progress,
                originals,
                method=method,
                sparsity=sparsity,
                pattern=pattern,
                **options,
            )
    except BaseException:
        with torch.no_grad():
            for linear, weight in originals.items():
                linear.weight.copy_(weight)
        raise
    finally:
        model.train(was_training)
    report["time_s"] = time.perf_counter() - started
    return model, report


def _compress_blocks(model, all_blocks, targeted, batches, propagation, progress, originals, **prune_args) -> list:
    """The loop of Algorithm 1 lines 8-10 with the chosen propagation; returns the report rows."""
    last = max(targeted)
    captured = [capture_block_inputs(model, all_blocks, b, last) for b in batches]  # dense x^(l-1), every block
    hidden = [c[0][0] for c in captured]
    rows = []
    for index in range(last + 1):
        block = all_blocks[index]
        kwargs = [c[index][1] for c in captured]
        if propagation == "dense":
            hidden = [c[index][0] for c in captured]
        if index in targeted:
            rows += prune_block(block, index, targeted[index], batches, hidden, kwargs, originals, **prune_args)
        if propagation == "sequential" and index < last:
            hidden = [run_block(block, h, kw) for h, kw in zip(hidden, kwargs)]
        if progress is not None:
            progress(index + 1, last + 1, f"block {index}")
    return rows


def prune_block(block, index, linears, batches, hidden, kwargs, originals, **prune_args) -> list:
    """Accumulate H for every target linear of one block from its inputs, then prune each linear."""
    acc = BlockHessians(index, linears)
    handles = [m.register_forward_pre_hook(acc.hook(n)) for n, m in linears.items()]
    try:
        for batch, h, kw in zip(batches, hidden, kwargs):
            acc.set_batch(batch)
            run_block(block, h, kw)
    finally:
        for handle in handles:
            handle.remove()
    rows = []
    for name, linear in linears.items():
        start = time.perf_counter()
        by_source = acc.hessians(name)
        H = sum(by_source.values())
        W = linear.weight.detach().to("cpu", torch.float64)  # exact: float64 holds every float32/bf16 value
        result = prune_layer(W, H, **prune_args)
        originals[linear] = linear.weight.detach().clone()
        linear.weight.copy_(result.weight.to(linear.weight.dtype))
        stored = linear.weight.detach().to("cpu", torch.float64)  # the report describes the model as stored
        seconds = time.perf_counter() - start
        rows.append(layer_row(index, name, acc, W, stored, result, by_source, seconds))
    return rows


def layer_row(index, name, acc, W, W_hat, result, by_source, seconds) -> dict:
    """One report line: sparsity reached, objective (Eq. 7) of the stored weights W_hat (the pruner's
    float64 result rounded to the model's dtype), in total and per token source."""
    per_source = {label: float(row_objectives(W, W_hat, h).sum()) for label, h in by_source.items()}
    energy = {label: float(((W @ h) * W).sum()) for label, h in by_source.items()}
    objective, dense = sum(per_source.values()), sum(energy.values())
    return {
        "block": index,
        "name": name,
        "shape": list(W.shape),
        "hessian_group": acc.group_of[name],
        "tokens": {LABELS[c]: n for c, n in acc.tokens.items() if n},
        "sparsity": float((W_hat == 0).double().mean()),
        "objective": objective,
        "relative_objective": objective / dense if dense > 0 else math.nan,
        "objective_by_source": per_source,
        "relative_objective_by_source": {k: per_source[k] / e if e > 0 else math.nan for k, e in energy.items()},
        "time_s": seconds,
        "info": {k: v for k, v in result.info.items() if k != "options"},
    }


def check_calibration(calibration) -> None:
    seqs = getattr(calibration, "sequences", None)
    labels = getattr(calibration, "labels", None)
    if seqs is None or labels is None or len(seqs) == 0:
        raise ValueError("calibration must be a non-empty CalibrationSet (from collect_calibration)")
    if len(seqs) != len(labels) or any(s.shape != lab.shape for s, lab in zip(seqs, labels)):
        raise ValueError("calibration must have one label per token of every sequence")
    if any(s.numel() == 0 for s in seqs):
        raise ValueError("calibration has an empty sequence")


def calibration_summary(calibration) -> dict:
    flat = torch.cat(list(calibration.labels))
    counts = {label: int((flat == code).sum()) for code, label in enumerate(LABELS)}
    return {
        "sequences": len(calibration.sequences),
        "tokens": int(flat.numel()),
        **counts,
        "meta": dict(getattr(calibration, "meta", {}) or {}),
    }
