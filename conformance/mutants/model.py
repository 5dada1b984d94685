"""Model-level mutants: compress (Phase II) with one plausible bug (SELF-1).

Each runs ``rac.reference.compress`` with one piece of ``rac.reference.compress``
replaced (restored after the call) or its result changed.
"""

from __future__ import annotations

import copy
import importlib

import torch

from rac.reference import compress

# the module, not the function rac.reference.compress that shadows it
C = importlib.import_module("rac.reference.compress")

from . import Mutant, patched, reference_port

_make_batches = C.make_batches
_prune_block = C.prune_block


def _batches_padding_labelled(calibration, batch_size, pad_id):
    """Padding positions carry the row's first label, so they are summed into H (P2-4)."""
    batches = _make_batches(calibration, batch_size, pad_id)
    for b in batches:
        first = b.labels[:, :1].expand_as(b.labels)
        b.labels = torch.where(b.labels < 0, first, b.labels)
    return batches


def _padding_in_hessian(model, calibration, **kw):
    with patched(C, make_batches=_batches_padding_labelled):
        return compress(model, calibration, **kw)


def _batches_last_token_dropped(calibration, batch_size, pad_id):
    """The last real token of every sequence is left out of H (a next-token-prediction shift)."""
    batches = _make_batches(calibration, batch_size, pad_id)
    for b in batches:
        last = b.attention_mask.sum(1) - 1
        b.labels[torch.arange(b.labels.shape[0]), last] = -1
    return batches


def _last_token_dropped(model, calibration, **kw):
    with patched(C, make_batches=_batches_last_token_dropped):
        return compress(model, calibration, **kw)


def _sequential_runs_dense(model, calibration, *, propagation="sequential", **kw):
    """propagation="sequential" silently runs as "dense" (the report still says sequential)."""
    model, report = compress(model, calibration, propagation="dense", **kw)
    report["propagation"] = propagation
    return model, report


def _objective_on_dense_inputs(model, calibration, *, propagation="sequential", **kw):
    """Weights from the sequential run, but each reported objective measured on the dense model's inputs."""
    if propagation != "sequential":
        return compress(model, calibration, propagation=propagation, **kw)
    _, dense_report = compress(copy.deepcopy(model), calibration, propagation="dense", **kw)
    model, report = compress(model, calibration, propagation=propagation, **kw)
    for row, dense_row in zip(report["layers"], dense_report["layers"]):
        for key in ("objective", "objective_by_source", "relative_objective", "relative_objective_by_source"):
            row[key] = dense_row[key]
    return model, report


def _lm_head_pruned_too(model, calibration, **kw):
    """The LM head is pruned as well (50% by magnitude), as the RAC authors' magnitude script does."""
    model, report = compress(model, calibration, **kw)
    with torch.no_grad():
        w = model.lm_head.weight
        threshold = w.abs().flatten().kthvalue(w.numel() // 2).values
        w.masked_fill_(w.abs() <= threshold, 0.0)
    return model, report


def _prune_block_forgetting_originals(block, index, linears, batches, hidden, kwargs, originals, **prune_args):
    return _prune_block(block, index, linears, batches, hidden, kwargs, {}, **prune_args)


def _no_restore_on_error(model, calibration, **kw):
    """After an error midway, the blocks pruned so far stay pruned (nothing recorded to restore)."""
    with patched(C, prune_block=_prune_block_forgetting_originals):
        return compress(model, calibration, **kw)


class _ShapeGroupedInputs(C.InputGroups):
    """Linears grouped by the shape of their input, not by the input itself: o_proj joins q/k/v."""

    def leader(self, name, x):
        if name not in self.group_of:
            same = [leader for seen, leader in self._seen if seen.shape == x.shape]
            self.group_of[name] = same[0] if same else name
        if self.group_of[name] == name:
            self._seen.append((x, name))
            return None
        return self.group_of[name]


def _hessian_grouped_by_shape(model, calibration, **kw):
    with patched(C, InputGroups=_ShapeGroupedInputs):
        return compress(model, calibration, **kw)


def _m(name, fn, ids, bug):
    return Mutant(reference_port(name, compress=fn), "model", ids, bug)


MUTANTS = {
    "model_padding_in_hessian": _m(
        "model_padding_in_hessian", _padding_in_hessian, {"P2-4"}, "padding tokens counted in H"
    ),
    "model_last_token_dropped": _m(
        "model_last_token_dropped", _last_token_dropped, {"P2-4", "P2-7"}, "last token of every sequence left out of H"
    ),
    "model_sequential_runs_dense": _m(
        "model_sequential_runs_dense",
        _sequential_runs_dense,
        {"P2-5", "P2-6"},
        "dense propagation when sequential was asked",
    ),
    "model_objective_on_dense_inputs": _m(
        "model_objective_on_dense_inputs",
        _objective_on_dense_inputs,
        {"P2-6"},
        "reported objective measured on the wrong (dense) inputs",
    ),
    "model_lm_head_pruned": _m(
        "model_lm_head_pruned", _lm_head_pruned_too, {"P2-2"}, "a non-target (LM head) modified"
    ),
    "model_no_restore_on_error": _m(
        "model_no_restore_on_error", _no_restore_on_error, {"P2-9"}, "weights pruned before an error are left behind"
    ),
    "model_hessian_grouped_by_shape": _m(
        "model_hessian_grouped_by_shape",
        _hessian_grouped_by_shape,
        {"P2-3"},
        "H shared by input shape, not input (o_proj uses q/k/v's H)",
    ),
}

globals().update({name: m.port for name, m in MUTANTS.items()})
