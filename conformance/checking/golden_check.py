#!/usr/bin/env python3
"""Check a port's outputs against the golden vectors (fixtures/golden/), with numpy alone.

    python golden_check.py OUTPUTS.npz [--golden DIR] [--dtype float32|float64] [--json FILE]

For ports in any language or framework (docs/porting.md, "Golden vectors"): read
``inputs.npz`` and ``manifest.json`` from the golden directory, run your port on
every case, save ``<case>.weight`` (float) and ``<case>.mask`` (bool, True = kept)
for each pruning case and ``<case>.H`` for each hessian case into one ``.npz``,
then run this file. It imports only numpy and the standard library, so it can be
copied anywhere. Exit status 0 if every case present passes (and at least one
was checked), 1 otherwise. ``--dtype`` is the precision your port computes in;
tolerances derive from it, as in the Python suite (conformance/checking/tolerances.py).

Rules per pruning case (each names the spec requirement it applies):
  GEN-1  shape of W, finite weights, boolean mask
  GEN-2  pruned entries exactly 0
  CNT-1 / NM-1  exactly floor(s * |g|) pruned per comparison group / N kept per group of M
  GOLD-4 the mask equals the reference's, except at positions the manifest lists as near ties
         (magnitude, wanda, sparsegpt; ALPS is judged by its objective, ALPS-2)
  MAG-2 / WANDA-3  kept weights equal W exactly
  SGPT-1 weights within 10 eps sqrt(in) kappa_s max(1, max|W_ref|) of the reference's (kappa_s: scaled cond of H_d)
  ALPS-2 objective within 1e-6 of tr(W H W^T) of the reference's
  OBJ-1  objective tr((W - W_hat) H (W - W_hat)^T) within the bound the weight tolerance implies
Hessian cases: HES-1, H a positive multiple of sum_t w_t x_t x_t^T to 40 N eps.
"""

from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

EPS = {"float64": float(np.finfo(np.float64).eps), "float32": float(np.finfo(np.float32).eps)}
DEFAULT_GOLDEN = Path(__file__).resolve().parents[2] / "fixtures" / "golden"


def pruned_count(sparsity: float, n: int) -> int:
    """floor(s * n) on the decimal the user wrote (CNT-3): Fraction(repr(s)), not binary floating point."""
    return int(Fraction(repr(float(sparsity))) * n)


def group_slices(group: str, shape):
    out_f, in_f = shape
    if group == "layer":
        return [(slice(None), slice(None))]
    if group == "row":
        return [(slice(r, r + 1), slice(None)) for r in range(out_f)]
    if group.startswith("block:"):
        bs = int(group.split(":")[1])
        return [(slice(None), slice(i, min(i + bs, in_f))) for i in range(0, in_f, bs)]
    raise ValueError(f"unknown group {group!r} in the manifest")


def objective(W, W_hat, H) -> float:
    D = W - W_hat
    return float(np.sum((D @ H) * D))


def scaled_condition(H, dampening: float) -> float:
    """cond(D^-1/2 H_d D^-1/2), H_d = H + dampening mean(diag H) I, D = diag(H_d): the conditioning that
    governs the rounding of SparseGPT's factorisation (the suite's tolerances.scaled_condition)."""
    mean_diag = float(np.mean(np.diagonal(H))) if H.size else 0.0
    H_d = H + dampening * (mean_diag if mean_diag > 0 else 1.0) * np.eye(H.shape[0])
    scale = np.sqrt(np.diagonal(H_d))
    eig = np.linalg.eigvalsh(H_d / scale[:, None] / scale[None, :])
    return float(eig.max() / eig.min()) if eig.min() > 0 else float("inf")


def check_prune_case(case: dict, W, H, ref_w, ref_m, weight, mask, eps: float) -> list:
    """Problems found (each a string naming the rule); [] if the case passes."""
    problems = []
    if weight.shape != W.shape or mask.shape != W.shape:
        return [f"GEN-1: shapes {weight.shape} / {mask.shape}, expected {W.shape}"]
    if mask.dtype != np.bool_:
        return [f"GEN-1: mask must be bool (True = kept), got {mask.dtype}"]
    if not np.issubdtype(weight.dtype, np.floating):
        return [f"GEN-1: weight must be floating point, got {weight.dtype}"]
    weight = weight.astype(np.float64)
    if not np.isfinite(weight).all():
        return ["GEN-1: weight holds NaN or Inf"]
    if np.any(weight[~mask] != 0):
        problems.append(f"GEN-2: {int(np.sum(weight[~mask] != 0))} pruned entries are not exactly 0")
    method, pattern = case["method"], case["pattern"]
    if pattern == "unstructured":
        for rows, cols in group_slices(case["group"], W.shape):
            g = mask[rows, cols]
            want, got = pruned_count(case["sparsity"], g.size), int(np.sum(~g))
            if got != want:
                problems.append(f"CNT-1: group rows {rows}, cols {cols} has {got} pruned, expected {want}")
                break
    else:
        n, m = map(int, pattern.split(":"))
        kept = mask.reshape(W.shape[0], -1, m).sum(-1)
        if np.any(kept != n):
            problems.append(f"NM-1: some group of {m} keeps {int(kept[kept != n][0])}, expected {n}")
    in_f = W.shape[1]
    energy = float(np.sum((W @ H) * W))
    got_obj, ref_obj = objective(W, weight, H), objective(W, ref_w, H)
    if method == "alps":
        tol = 1e-6 * energy
        if abs(got_obj - ref_obj) > tol:
            problems.append(f"ALPS-2: objective {got_obj:.10g} vs reference {ref_obj:.10g} (tolerance {tol:.3g})")
        return problems
    allowed = np.zeros(W.shape, dtype=bool)
    for r, c in case.get("near_ties", []):
        allowed[r, c] = True
    differ = (mask != ref_m) & ~allowed
    if differ.any():
        r, c = np.argwhere(differ)[0]
        problems.append(
            f"GOLD-4: mask differs from the reference's at {int(differ.sum())} positions, first ({r}, {c}): "
            f"port {'keeps' if mask[r, c] else 'prunes'} it"
        )
        return problems
    if method in ("magnitude", "wanda"):
        if np.any(weight[mask] != W[mask]):
            rule = "MAG-2" if method == "magnitude" else "WANDA-3"
            problems.append(f"{rule}: kept weights changed")
        delta = 0.0
    else:
        d = case["options"].get("dampening", 0.01)
        scale = max(1.0, float(np.abs(ref_w).max()))
        delta = 10 * eps * in_f**0.5 * scaled_condition(H, d) * scale
        err = float(np.abs(weight - ref_w).max())
        if err > delta:
            problems.append(f"SGPT-1: weights differ from the reference's by {err:.3g} (tolerance {delta:.3g})")
    # |tr(D H D^T) - tr(D' H D'^T)| <= 2 delta sum|H D'^T| + delta^2 out sum|H| for |D - D'| <= delta elementwise,
    # plus the float64 rounding of the two sums (10 in eps64 of the sum of absolute terms)
    D = W - ref_w
    tol = 2 * delta * float(np.abs(D @ H).sum()) + delta**2 * W.shape[0] * float(np.abs(H).sum())
    tol += 2 * 10 * in_f * EPS["float64"] * float(np.sum((np.abs(D) @ np.abs(H)) * np.abs(D)))
    if abs(got_obj - ref_obj) > tol:
        problems.append(f"OBJ-1: objective {got_obj:.10g} vs reference {ref_obj:.10g} (tolerance {tol:.3g})")
    return problems


def check_hessian_case(X, w, ref_H, H, eps: float) -> list:
    if H.shape != ref_H.shape:
        return [f"GEN-1: H has shape {H.shape}, expected {ref_H.shape}"]
    H = H.astype(np.float64)
    if not np.isfinite(H).all():
        return ["GEN-1: H holds NaN or Inf"]
    c = float(np.trace(H) / np.trace(ref_H))
    if not c > 0:
        return [f"HES-1: H must be a positive multiple of sum_t w_t x_t x_t^T (scale {c})"]
    err = float(np.abs(H / c - ref_H).max())
    tol = 40 * X.shape[1] * eps * float(np.abs(ref_H).max())
    return [] if err <= tol else [f"HES-1: H / {c:.6g} differs by {err:.3g} (tolerance {tol:.3g})"]


def check(outputs: dict, golden: Path, dtype: str) -> dict:
    """{case: {"status": pass|fail|missing, "problems": [...]}} for every case of the manifest."""
    manifest = json.loads((golden / "manifest.json").read_text(encoding="utf-8"))
    with np.load(golden / manifest["files"]["inputs"]["name"]) as f:
        inputs = {k: f[k] for k in f.files}
    with np.load(golden / manifest["files"]["expected"]["name"]) as f:
        expected = {k: f[k] for k in f.files}
    eps = EPS[dtype]
    results = {}
    for case in manifest["cases"]:
        name = case["name"]
        if case["kind"] == "hessian":
            key = f"{name}.H"
            if key not in outputs:
                results[name] = {"status": "missing", "problems": []}
                continue
            layer = case["layer"]
            problems = check_hessian_case(
                inputs[f"{layer}.X"], inputs[f"{layer}.token_weights"], expected[key], np.asarray(outputs[key]), eps
            )
        else:
            wk, mk = f"{name}.weight", f"{name}.mask"
            if wk not in outputs or mk not in outputs:
                results[name] = {"status": "missing", "problems": []}
                continue
            layer = case["layer"]
            problems = check_prune_case(
                case,
                inputs[f"{layer}.W"],
                inputs[f"{layer}.H"],
                expected[wk],
                expected[mk],
                np.asarray(outputs[wk]),
                np.asarray(outputs[mk]),
                eps,
            )
        results[name] = {"status": "fail" if problems else "pass", "problems": problems}
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Check a port's outputs against the rac-spec golden vectors (numpy only)."
    )
    parser.add_argument("outputs", type=Path, help=".npz with <case>.weight, <case>.mask (and <case>.H) arrays")
    parser.add_argument("--golden", type=Path, default=DEFAULT_GOLDEN, help="golden directory (default: %(default)s)")
    parser.add_argument("--dtype", choices=sorted(EPS), default="float64", help="precision the port computes in")
    parser.add_argument("--json", type=Path, default=None, help="also write the per-case results here")
    args = parser.parse_args(argv)
    if not (args.golden / "manifest.json").is_file():
        parser.error(f"--golden {args.golden}: no manifest.json there")
    with np.load(args.outputs) as f:
        outputs = {k: f[k] for k in f.files}
    results = check(outputs, args.golden, args.dtype)
    for name, r in results.items():
        print(f"{name:<32} {r['status']}" + "".join(f"\n    {p}" for p in r["problems"]))
    counts = {s: sum(r["status"] == s for r in results.values()) for s in ("pass", "fail", "missing")}
    print(", ".join(f"{k} {v}" for k, v in counts.items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0 if counts["fail"] == 0 and counts["pass"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
