"""Golden vectors: fixed inputs and the reference's outputs, for ports that cannot import this suite.

    python -m rac.conformance.checking.golden regenerate [--out DIR]  # from rac.reference (default: fixtures/golden)
    python -m rac.conformance.checking.golden verify-current [--golden DIR]  # regenerate in a temp dir, compare
    python -m rac.conformance.checking.golden run --port pkg.mod:obj --out outputs.npz  # a Python port's outputs
    python -m rac.conformance.checking.golden check outputs.npz [--dtype float32]  # = checking/golden_check.py

Files (docs/porting.md, "Golden vectors"):

- ``inputs.npz``: per layer ``<layer>.W`` (out x in), ``<layer>.H`` (in x in), ``<layer>.X``
  (in x tokens, H = X X^T exactly) and ``<layer>.token_weights``;
- ``expected.npz``: per case ``<case>.weight`` and ``<case>.mask`` (hessian cases: ``<case>.H``);
- ``manifest.json``: every case (layer, method, pattern, sparsity, options, comparison
  group, near ties), and the sha256 of both files.

Inputs are built to be bit-reproducible on any machine: X holds multiples of 1/16
(outliers scaled by 64), so every product and sum of H = X X^T is exact in float64
whatever the summation order, and W is rounded to bfloat16 or float32 values, so a
float32 port sees exactly the same W. Layers are drawn (seeds searched in order) so
that no mask decision of magnitude, Wanda or SparseGPT is a near tie: every boundary
between the lowest kept and the highest pruned score of a selection is at least
``MIN_MARGIN`` apart, relative, unless the scores are exactly equal (then TIE-1
decides, in any dtype). So masks are compared exactly (GOLD-4).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from rac.conformance.checking import golden_check
from rac.reference import hessian, parse_pattern, prune_layer
from rac.reference.masks import select_mask
from rac.reference.sparsegpt import dead_inputs, factor_with_recovery, sparsegpt_sweep
from rac.reference.contract import registry
from rac.reference.contract.registry import BUILTIN_METHODS

GOLDEN_DIR = golden_check.DEFAULT_GOLDEN
#: Relative gap a mask decision must clear to count as no near tie: far above float32 score rounding.
MIN_MARGIN = 1e-4
#: SparseGPT runs twice per case: at blocksize 8 (several blocks on these layers; for ports that take
#: the option) and at the spec's defaults (no option passed: every port, PORT-7)
SPARSEGPT_OPTIONS = {"blocksize": 8}
DEFAULT_BLOCKSIZE = 128
METHODS = BUILTIN_METHODS  # the golden files cover the spec's pruners
PATTERNS = (("unstructured", 0.5), ("unstructured", 0.29), ("2:4", None), ("1:4", None))


# --------------------------------------------------------------------------- layers


def _dyadic(t: torch.Tensor, bits: int = 4) -> torch.Tensor:
    return torch.round(t * 2**bits) / 2**bits


def gaussian_layer(seed: int, out_f=8, in_f=16, tokens=48) -> dict:
    g = torch.Generator().manual_seed(seed)
    X = _dyadic(torch.randn(in_f, tokens, generator=g, dtype=torch.float64))
    W = torch.randn(out_f, in_f, generator=g, dtype=torch.float64).to(torch.float32).to(torch.float64)
    return {"W": W, "X": X}


def hard_layer(seed: int, out_f=6, in_f=24, tokens=12) -> dict:
    """Rank-deficient (tokens < in), dead inputs, 64x outlier features, bfloat16 weights (exact ties)."""
    g = torch.Generator().manual_seed(seed)
    X = _dyadic(torch.randn(in_f, tokens, generator=g, dtype=torch.float64))
    W = torch.randn(out_f, in_f, generator=g, dtype=torch.float64).to(torch.bfloat16).to(torch.float64)
    picks = torch.randperm(in_f, generator=g)
    X[picks[:2]] *= 64.0
    X[picks[-3:]] = 0.0
    return {"W": W, "X": X}


def tied_layer() -> dict:
    """Many exact ties in |W| and in |W| sqrt(H_jj) (TIE-1); H = diag of perfect squares."""
    W = torch.tensor(
        [
            [1.0, -1.0, 2.0, 1.0, -2.0, 1.0, 0.5, -0.5],
            [0.5, 0.5, -0.5, 3.0, 1.0, -1.0, 1.0, 0.5],
            [2.0, -2.0, 2.0, 2.0, 1.0, 1.0, -1.0, 1.0],
        ],
        dtype=torch.float64,
    )
    X = torch.diag(torch.tensor([1.0, 1.0, 2.0, 1.0, 2.0, 1.0, 4.0, 4.0], dtype=torch.float64))
    return {"W": W, "X": X}


def finish(layer: dict) -> dict:
    X = layer["X"]
    w = torch.ones(X.shape[1], dtype=torch.float64)
    w[::5] = 0.0  # padding positions: weight 0 (HES-4), whatever they hold
    w[1::5] = 2.0
    return dict(layer, H=hessian(X), token_weights=w)


# --------------------------------------------------------------------------- margins


def _group_margins(scores: torch.Tensor, keep: torch.Tensor, groups) -> float:
    """Smallest relative gap (lowest kept - highest pruned) over the groups; exact ties count as no gap issue."""
    worst = float("inf")
    for g in groups:
        s, k = scores[g].reshape(-1), keep[g].reshape(-1)
        if bool(k.all()) or not bool(k.any()):
            continue
        lo, hi = float(s[k].min()), float(s[~k].max())
        if lo == hi:
            continue  # an exact tie: TIE-1 decides it identically in any dtype
        worst = min(worst, (lo - hi) / max(abs(lo), abs(hi)))
    return worst


def _selection_groups(shape, pattern, group):
    out_f, in_f = shape
    if pattern.kind == "nm":
        return [(slice(r, r + 1), slice(c, c + pattern.m)) for r in range(out_f) for c in range(0, in_f, pattern.m)]
    return golden_check.group_slices(group, shape)


def min_margin(W, H, method: str, pattern: str, sparsity, blocksize: int = SPARSEGPT_OPTIONS["blocksize"]) -> float:
    """The closest mask decision the reference makes on this case (relative score gap)."""
    pat = parse_pattern(pattern, W.shape[1])
    if method in ("magnitude", "wanda"):
        scores = W.abs() if method == "magnitude" else W.abs() * torch.diagonal(H).sqrt()
        keep = prune_layer(W, H, method=method, sparsity=sparsity, pattern=pattern).mask
        return _group_margins(scores, keep, _selection_groups(W.shape, pat, registry.get(method).comparison_group()))
    if method != "sparsegpt":
        return float("inf")
    U, _ = factor_with_recovery(H, 0.01, "raise")
    margins = []

    def select(scores, p, s, group):
        keep = select_mask(scores, p, s, group)
        margins.append(_group_margins(scores, keep, _selection_groups(scores.shape, p, "layer")))
        return keep

    sparsegpt_sweep(W, U, dead_inputs(H), pat, sparsity or 0.0, blocksize, select=select)
    return min(margins, default=float("inf"))


def _layer_margin(layer: dict) -> float:
    W, H = layer["W"], layer["H"]
    return min(
        min_margin(W, H, m, p, s, blocksize)
        for m in ("magnitude", "wanda", "sparsegpt")
        for p, s in PATTERNS
        for blocksize in (SPARSEGPT_OPTIONS["blocksize"], DEFAULT_BLOCKSIZE)
        if p == "unstructured" or W.shape[1] % int(p.split(":")[1]) == 0
    )


def search(make, first_seed: int) -> tuple[int, dict]:
    """The first seed from ``first_seed`` whose layer has no near tie (deterministic)."""
    for seed in range(first_seed, first_seed + 200):
        layer = finish(make(seed))
        if _layer_margin(layer) >= MIN_MARGIN:
            return seed, layer
    raise RuntimeError(f"no seed in {first_seed}..{first_seed + 199} without near ties")


# --------------------------------------------------------------------------- generation


def build_layers() -> tuple[dict, dict]:
    """{name: layer} and {name: how it was made}."""
    g_seed, gauss = search(gaussian_layer, 0)
    h_seed, hard = search(hard_layer, 1000)
    layers = {"gauss": gauss, "hard": hard, "ties": finish(tied_layer())}
    made = {"gauss": f"gaussian_layer(seed={g_seed})", "hard": f"hard_layer(seed={h_seed})", "ties": "tied_layer()"}
    return layers, made


def build_cases(layers: dict) -> tuple[list, dict]:
    """Manifest entries and the reference's outputs for every (layer, method, pattern)."""
    cases, expected = [], {}
    for lname, layer in layers.items():
        W, H = layer["W"], layer["H"]
        name = f"hessian-{lname}"
        cases.append({"name": name, "kind": "hessian", "layer": lname, "call": "hessian(X, token_weights)"})
        expected[f"{name}.H"] = hessian(layer["X"], layer["token_weights"])
        for method in METHODS:
            for pattern, sparsity in PATTERNS:
                if pattern != "unstructured" and W.shape[1] % int(pattern.split(":")[1]):
                    continue
                for options in ([dict(SPARSEGPT_OPTIONS), {}] if method == "sparsegpt" else [{}]):
                    tag = f"s{int(round(sparsity * 100)):02d}" if sparsity is not None else pattern.replace(":", "of")
                    name = f"{lname}-{method}-{tag}" + ("-defaults" if method == "sparsegpt" and not options else "")
                    result = prune_layer(W, H, method=method, sparsity=sparsity, pattern=pattern, **options)
                    blocksize = options.get("blocksize", DEFAULT_BLOCKSIZE)
                    group = f"block:{blocksize}" if method == "sparsegpt" else registry.get(method).comparison_group()
                    margin = min_margin(W, H, method, pattern, sparsity, blocksize)
                    cases.append(
                        {
                            "name": name,
                            "kind": "prune",
                            "layer": lname,
                            "method": method,
                            "pattern": pattern,
                            "sparsity": sparsity,
                            "options": options,
                            "group": group,
                            "min_margin": None if margin == float("inf") else margin,
                            "near_ties": [],
                        }
                    )
                    expected[f"{name}.weight"] = result.weight
                    expected[f"{name}.mask"] = result.mask
    return cases, expected


def write_npz(path: Path, arrays: dict) -> None:
    """Deterministic .npz: sorted members, fixed timestamps, no compression (same bytes on every machine)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for key in sorted(arrays):
            arr = arrays[key]
            arr = arr.numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            z.writestr(info, member.getvalue())
    path.write_bytes(buf.getvalue())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def regenerate(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    layers, made = build_layers()
    cases, expected = build_cases(layers)
    inputs = {f"{l}.{k}": v for l, layer in layers.items() for k, v in layer.items()}
    write_npz(out / "inputs.npz", inputs)
    write_npz(out / "expected.npz", expected)
    manifest = {
        "about": "rac-spec golden vectors: inputs and rac.reference outputs; see docs/porting.md and "
        "conformance/checking/golden_check.py (numpy only). "
        "Regenerate: python -m rac.conformance.checking.golden regenerate",
        "generator": "rac.conformance.checking.golden",
        "reference_dtype": "float64",
        "min_margin": MIN_MARGIN,
        "conventions": {
            "mask": "bool, True = kept",
            "N:M": "N kept of every M consecutive inputs (NM-2)",
            "weights": "float64 arrays; W values are exact in float32",
            "H": "X X^T (exact)",
        },
        "layers": {
            name: {"made_by": made[name], "W": list(layer["W"].shape), "X": list(layer["X"].shape)}
            for name, layer in layers.items()
        },
        "files": {
            "inputs": {"name": "inputs.npz", "sha256": sha256(out / "inputs.npz")},
            "expected": {"name": "expected.npz", "sha256": sha256(out / "expected.npz")},
        },
        "cases": cases,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return out


# --------------------------------------------------------------------------- checks


def verify_checksums(golden: Path) -> list:
    """GOLD-2: each file's sha256 is the manifest's."""
    manifest = json.loads((golden / "manifest.json").read_text(encoding="utf-8"))
    problems = []
    for role, entry in manifest["files"].items():
        path = golden / entry["name"]
        if not path.is_file():
            problems.append(f"{role}: {path} is missing")
        elif sha256(path) != entry["sha256"]:
            problems.append(f"{role}: {path.name} has sha256 {sha256(path)}, manifest says {entry['sha256']}")
    return problems


def verify_current(golden: Path) -> list:
    """GOLD-1: regenerating from the reference gives the same inputs (bitwise), the same cases, and outputs
    that the checker accepts against the stored ones at float64 tolerances (BLAS may differ in the last bits)."""
    problems = verify_checksums(golden)
    stored = json.loads((golden / "manifest.json").read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="rac-golden-") as tmp:
        fresh_dir = regenerate(Path(tmp))
        fresh = json.loads((fresh_dir / "manifest.json").read_text(encoding="utf-8"))
        if fresh["files"]["inputs"]["sha256"] != stored["files"]["inputs"]["sha256"]:
            problems.append("inputs.npz: regenerated inputs differ from the stored ones")
        strip = lambda cs: [{k: v for k, v in c.items() if k != "min_margin"} for c in cs]  # noqa: E731
        if strip(fresh["cases"]) != strip(stored["cases"]) or fresh["layers"] != stored["layers"]:
            problems.append("manifest.json: the cases or layers changed")
        with np.load(fresh_dir / "expected.npz") as f:
            outputs = {k: f[k] for k in f.files}
    if not problems:
        results = golden_check.check(outputs, golden, "float64")
        problems += [f"{name}: {p}" for name, r in results.items() for p in r["problems"]]
        problems += [f"{name}: missing" for name, r in results.items() if r["status"] == "missing"]
    return problems


def run_port(port, golden: Path) -> dict:
    """Call a loaded Port (rac.conformance.harness.ports) on every golden case it supports: {key: array}."""
    manifest = json.loads((golden / "manifest.json").read_text(encoding="utf-8"))
    with np.load(golden / manifest["files"]["inputs"]["name"]) as f:
        inputs = {k: torch.from_numpy(f[k]) for k in f.files}
    out = {}
    for case in manifest["cases"]:
        lname = case["layer"]
        if case["kind"] == "hessian":
            if port.has_hessian:
                out[f"{case['name']}.H"] = port.hessian(inputs[f"{lname}.X"], inputs[f"{lname}.token_weights"]).numpy()
            continue
        if not port.supports(case["method"], case["pattern"]):
            continue
        if not all(port.accepts(case["method"], option) for option in case["options"]):
            continue  # a case at a non-default option; its "-defaults" twin runs for every port (PORT-7)
        weight, mask, _ = port.prune(
            inputs[f"{lname}.W"],
            inputs[f"{lname}.H"],
            method=case["method"],
            sparsity=case["sparsity"],
            pattern=case["pattern"],
            **case["options"],
        )
        out[f"{case['name']}.weight"], out[f"{case['name']}.mask"] = weight.numpy(), mask.numpy()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("regenerate", help="write the golden files from rac.reference")
    p.add_argument("--out", type=Path, default=GOLDEN_DIR)
    p = sub.add_parser("verify-current", help="regenerate in a temp dir; exit 1 if the stored files are stale")
    p.add_argument("--golden", type=Path, default=GOLDEN_DIR)
    p = sub.add_parser("run", help="run a Python port on the golden inputs and save its outputs")
    p.add_argument("--port", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--golden", type=Path, default=GOLDEN_DIR)
    p = sub.add_parser("check", help="check an outputs .npz (same as conformance/checking/golden_check.py)")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "regenerate":
        print(f"wrote {regenerate(args.out)}")
        return 0
    if args.command == "verify-current":
        problems = verify_current(args.golden)
        for line in problems:
            print(line)
        print(
            "golden vectors are current"
            if not problems
            else f"{len(problems)} problem(s): python -m rac.conformance.checking.golden regenerate, if the "
                 "reference changed on purpose"
        )
        return 1 if problems else 0
    if args.command == "run":
        from rac.conformance.harness.ports import Port

        outputs = run_port(Port.load(args.port), args.golden)
        write_npz(args.out, outputs)
        print(f"wrote {len(outputs)} arrays to {args.out}")
        return 0
    return golden_check.main(args.rest)


if __name__ == "__main__":
    sys.exit(main())
