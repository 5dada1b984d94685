"""Figure 2 of the paper: where does RAC reduce the error of a pruned model, token by token?

    rollouts = dense_rollouts(dense, tokenizer, problems, max_new_tokens=...)
    result = reconstruction_errors(dense, {"prompt": m_prompt, "rac": m_rac}, rollouts)
    plot_heatmap(result, "figure2.png")

Paper, section 5.1, "RAC mitigates errors during decoding": for each held-out problem, the
fixed sequence z = prompt x_{0:T_in-1} + the dense model's own greedy rollout c_{T_in:T}; every
model is run teacher-forced over the same z (causal attention: the state at position t sees
z_{0:t} only, exactly what decoding computed), and at every position

    e_t(meth) = || x_dense,t^(L) - x_meth,t^(L) ||_2,     r_t = e_t(prompt) / e_t(rac).

**Which tensor is x_t^(L).** The paper defines it twice: as the output of the last transformer
layer (Eq. 4) and as the vector the output projection maps to the logits, y_t = W_out x_t^(L)
(section 4). In a pre-norm transformer (Qwen, Llama) those differ by the final RMSNorm. We
take the second: **the input of the LM head** (``model.get_output_embeddings()``), i.e. the last
block's output after the final norm, which is what decides the next token; its scale is fixed
by the norm, so errors of different positions are comparable. The last block's raw output
(before the norm, the residual stream, whose norm grows along the layers) is recorded too
(``*_last_block``) so the choice can be checked; the heatmap uses the LM-head input.

**Which positions.** Every position whose state decoding computes: the T_in prompt positions
and every generated token except the last one (generation stops after sampling it, so its state
is never computed). The prompt/decode boundary is at index T_in, the prompt length: positions
< T_in are prompt tokens (P), positions >= T_in generated tokens (D).

Each sequence is run alone (batch of one, no padding), so the numbers do not depend on how
problems are grouped.
"""

from __future__ import annotations

import math
import statistics

import torch

from rac.reference.contract.models import decoder_blocks, eval_mode
from rac.reference.calibration import eos_token_ids
from rac.cli.evaluate import build_prompts, generate_batch

#: The two calibrations the figure compares: r_t = e_t(NUMERATOR) / e_t(DENOMINATOR).
NUMERATOR, DENOMINATOR = "prompt", "rac"


def dense_rollouts(model, tokenizer, problems: list, *, max_new_tokens: int, batch_size: int = 32) -> list:
    """Per problem: {"id", "prompt_ids", "generated_ids", "stopped"}: the templated prompt and the dense
    model's greedy reply (up to and including EOS), as ``rac eval`` generates it."""
    prompts, _ = build_prompts(tokenizer, problems)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = eos_token_ids(model, tokenizer)
    out = []
    with eval_mode(model):
        for first in range(0, len(prompts), batch_size):
            batch = prompts[first:first + batch_size]
            rows = generate_batch(model, batch, max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0, seed=0,
                                  pad_id=pad_id, eos_ids=eos_ids)
            for i, (prompt, (tokens, stopped)) in enumerate(zip(batch, rows), start=first):
                out.append({"id": str(problems[i].get("id", i)), "prompt_ids": prompt.tolist(),
                            "generated_ids": list(tokens), "stopped": stopped})
    return out


def last_hidden_states(model, ids: torch.Tensor) -> dict:
    """One teacher-forced forward over ``ids`` (1-D): {"lm_head_input": [T, d], "last_block": [T, d]}, float32 on
    the CPU. lm_head_input is x_t^(L) of the figure (module docstring); last_block the last decoder block's output."""
    captured = {}

    def head_hook(module, args):
        captured["lm_head_input"] = args[0].detach()[0].to("cpu", torch.float32)

    def block_hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        captured["last_block"] = hidden.detach()[0].to("cpu", torch.float32)

    handles = [model.get_output_embeddings().register_forward_pre_hook(head_hook),
               decoder_blocks(model)[-1].register_forward_hook(block_hook)]
    try:
        with torch.no_grad():
            model(input_ids=ids.to(model.device)[None], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return captured


def token_errors(dense: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """e_t = ||x_dense,t - x_pruned,t||_2 per position (rows), in float64."""
    return torch.linalg.vector_norm(dense.double() - pruned.double(), dim=-1)


def _ratio(num: float, den: float):
    return num / den if den > 0 else None  # e_rac = 0 would make r undefined (never seen: pruning moves every state)


def reconstruction_errors(dense, pruned: dict, rollouts: list) -> dict:
    """e_t per pruned model and r_t = e_t(prompt) / e_t(rac) along every rollout (module docstring).

    pruned: {"prompt": model, "rac": model, ...}: e_t is recorded for every model given (e.g. also "text"), r_t for
    prompt / rac. Returns {"problems": [...], "summary": {...}}; per problem
    "boundary" = T_in (the prompt length), "tokens" (the positions' ids), e_* and r per position for
    the LM-head input and, suffixed ``_last_block``, for the last block's output.
    """
    missing = {NUMERATOR, DENOMINATOR} - set(pruned)
    if missing:
        raise ValueError(f"pruned must hold models for {sorted({NUMERATOR, DENOMINATOR})}; missing {sorted(missing)}")
    models = [dense, *pruned.values()]
    flags = [m.training for m in models]
    for m in models:
        m.eval()
    rows = []
    try:
        for roll in rollouts:
            seq = roll["prompt_ids"] + roll["generated_ids"]
            ids = torch.tensor(seq[:-1], dtype=torch.long)  # the last token's state is never computed (docstring)
            ref = last_hidden_states(dense, ids)
            row = {"id": roll["id"], "boundary": len(roll["prompt_ids"]), "tokens": ids.tolist(),
                   "stopped": roll["stopped"]}
            for suffix, key in (("", "lm_head_input"), ("_last_block", "last_block")):
                errs = {name: token_errors(ref[key], last_hidden_states(m, ids)[key]).tolist()
                        for name, m in pruned.items()}
                for name, e in errs.items():
                    row[f"e_{name}{suffix}"] = e
                row[f"ratio{suffix}"] = [_ratio(a, b) for a, b in zip(errs[NUMERATOR], errs[DENOMINATOR])]
                row[f"dense_norm{suffix}"] = torch.linalg.vector_norm(ref[key].double(), dim=-1).tolist()
            rows.append(row)
    finally:
        for m, flag in zip(models, flags):
            m.train(flag)
    return {"problems": rows, "summary": summarize(rows)}


def summarize(rows: list) -> dict:
    """Per part (prompt positions, decode positions): the geometric mean of r_t, the fraction of positions
    with r_t > 1 (RAC closer to the dense model) and the mean e_t of every pruned model (``mean_e``, by
    calibration); ``rows_decode_geomean_ratio``: the geometric mean of r_t over each row's decode positions."""
    names = sorted(k[2:] for k in rows[0] if k.startswith("e_") and not k.endswith("_last_block")) if rows else []

    def part(sl, suffix) -> dict:
        rs = [v for r in rows for v in r[f"ratio{suffix}"][sl(r)] if v is not None]
        if not rs:
            return {"positions": 0}
        return {
            "positions": len(rs),
            "geomean_ratio": _geomean(rs),
            "fraction_rac_better": sum(v > 1 for v in rs) / len(rs),
            "mean_e": {n: statistics.fmean(v for r in rows for v in r[f"e_{n}{suffix}"][sl(r)]) for n in names},
        }

    out = {}
    for suffix in ("", "_last_block"):
        out[f"prompt_positions{suffix}"] = part(lambda r: slice(0, r["boundary"]), suffix)
        out[f"decode_positions{suffix}"] = part(lambda r: slice(r["boundary"], None), suffix)
    out["rows_decode_geomean_ratio"] = [
        _geomean([v for v in r["ratio"][r["boundary"] :] if v is not None]) for r in rows
    ]
    return out


def _geomean(values: list):
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else None


# --------------------------------------------------------------------------- the heatmap


def aligned_matrix(rows: list, key: str = "ratio") -> tuple:
    """(matrix [problems, columns] with NaN where a row has no position, offset): rows aligned at the
    boundary, so column j holds position boundary - offset + j of each row, and the boundary of every
    row is column ``offset`` (= the longest prompt)."""
    offset = max(r["boundary"] for r in rows)
    width = offset + max(len(r[key]) - r["boundary"] for r in rows)
    M = torch.full((len(rows), width), float("nan"), dtype=torch.float64)
    for i, r in enumerate(rows):
        values = torch.tensor([float("nan") if v is None else v for v in r[key]], dtype=torch.float64)
        start = offset - r["boundary"]
        M[i, start : start + values.numel()] = values
    return M, offset


def plot_heatmap(result: dict, path, *, title: str = "", key: str = "ratio"):
    """r_t as a heatmap (problems as rows, positions as columns aligned at the prompt/decode boundary,
    a dashed black line there), log colour scale centred at 1: blue r > 1 (RAC lower error), red r < 1
    (prompt-only lower), grey ~ 1, white = no position. Below it, the geometric mean of r over the problems
    per column. PNG through a temporary file."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    from rac.cli.experiment_report import save_figure_atomic

    rows = result["problems"]
    M, offset = aligned_matrix(rows, key)
    logs = torch.log(M[torch.isfinite(M)].clamp_min(1e-300))
    span = float(torch.quantile(logs.abs(), 0.98)) if logs.numel() else 1.0
    limit = math.exp(max(span, math.log(1.5)))  # symmetric in log space: 1 sits in the middle of the colour bar
    cmap = colormaps["coolwarm_r"].with_extremes(
        bad="white", under=colormaps["coolwarm_r"](0.0), over=colormaps["coolwarm_r"](1.0)
    )
    fig = Figure(figsize=(11, 2.2 + 0.17 * len(rows)), layout="constrained")
    FigureCanvasAgg(fig)
    ax, ax_mean = fig.subplots(2, 1, sharex=True, height_ratios=[max(3, 0.17 * len(rows)), 1.2])
    x0, x1 = -offset - 0.5, M.shape[1] - offset - 0.5
    image = ax.imshow(
        M.numpy(),
        aspect="auto",
        interpolation="nearest",
        cmap=cmap,
        norm=LogNorm(vmin=1 / limit, vmax=limit),
        extent=(x0, x1, len(rows) - 0.5, -0.5),
    )
    for a in (ax, ax_mean):
        a.axvline(-0.5, color="black", linestyle="--", linewidth=1.2)
    ax.set_yticks(range(len(rows)), [r["id"] for r in rows], fontsize=6)
    ax.set_ylabel("held-out problem")
    ax.set_title(title or "r_t = e_t(prompt-only) / e_t(RAC); blue: RAC closer to the dense model", fontsize=10)
    ticks = [2.0**k for k in range(-12, 13) if 1 / limit <= 2.0**k <= limit]  # plain numbers, powers of 2
    labels = [f"{t:g}" for t in ticks]
    bar = fig.colorbar(image, ax=[ax, ax_mean], label="r_t (log scale)", extend="both")  # both panels: one width
    bar.set_ticks(ticks, labels=labels)
    bar.minorticks_off()
    with torch.no_grad():
        finite = torch.isfinite(M)
        log_mean = torch.where(finite, torch.log(M.clamp_min(1e-300)), 0).sum(0) / finite.sum(0).clamp_min(1)
    xs = torch.arange(M.shape[1]) - offset
    counts = finite.sum(0)
    ax_mean.plot(xs[counts > 0].numpy(), torch.exp(log_mean)[counts > 0].numpy(), color="tab:blue", linewidth=1)
    ax_mean.axhline(1.0, color="grey", linewidth=0.8)
    ax_mean.set_yscale("log")
    low, high = ax_mean.get_ylim()
    mean_ticks = [2.0**k for k in range(-12, 13) if low <= 2.0**k <= high] or [1.0]
    ax_mean.set_yticks(mean_ticks, labels=[f"{t:g}" for t in mean_ticks])
    ax_mean.minorticks_off()
    ax_mean.set_ylabel("geomean r_t")
    ax_mean.set_xlabel("token position relative to the prompt/decode boundary (dashed): < 0 prompt, >= 0 generated")
    ax_mean.set_xlim(x0, x1)
    return save_figure_atomic(fig, path)
