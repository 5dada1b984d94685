"""The experiment's results as the paper shows them: Markdown tables (Tables 1 and 9) and one plot.

    markdown_tables(results) -> str
    plot_results(results, path)     # PNG: accuracy and thinking tokens against sparsity, a line per calibration
    write_outputs(results, out_dir, overwrite=False, plot=True)

``write_outputs`` writes ``results.json``, ``results.md`` and ``results.png`` into a temporary
directory beside ``out_dir`` and renames it into place at the end, so an interrupted or failed
write never leaves a directory that looks complete. matplotlib is used through its Agg canvas
(no display, no global backend switch).
"""

from __future__ import annotations

import json
from pathlib import Path

from rac.reference.contract.atomic import atomic_directory, atomic_file

#: One colour and marker per calibration, the same in every panel.
STYLE = {"text": ("tab:green", "s"), "prompt": ("tab:orange", "^"), "rac": ("tab:blue", "o")}


def _settings_rows(results) -> list:
    """(method, setting) in the order the cells were run."""
    seen = []
    for c in results["cells"]:
        key = (c["method"], c["setting"])
        if key not in seen:
            seen.append(key)
    return seen


def _calibrations(results) -> list:
    return list(dict.fromkeys(c["calibration"] for c in results["cells"]))


def _index(results) -> dict:
    return {(c["method"], c["setting"], c["calibration"]): c for c in results["cells"]}


def markdown_tables(results: dict) -> str:
    """Accuracy ± SE and mean thinking tokens per cell (Tables 1 / 9), then the details of every cell."""
    cals, cells, dense = _calibrations(results), _index(results), results["dense"]
    s = results["settings"]
    head = (f"acc@1 (SE) and mean thinking tokens on {dense['problems']} held-out problems (greedy, at most "
            f"{s['max_new_tokens']} new tokens); calibration: {s['token_budget']} tokens per mode; "
            f"best accuracy of each row in bold (none where the row's cells are all equal).")
    cols = [f"acc {c}" for c in cals] + [f"think {c}" for c in cals]
    lines = [head, "", "| method | sparsity | " + " | ".join(cols) + " |",
             "| --- | --- |" + " ---: |" * len(cols)]
    dense_acc = f"{dense['acc']:.3f} ({dense['se']:.3f})"
    lines.append("| dense | 0% | " + " | ".join([dense_acc] * len(cals) + [f"{dense['thinking_mean']:.1f}"] * len(cals))
                 + " |")
    for method, setting in _settings_rows(results):
        row = [cells.get((method, setting, c)) for c in cals]
        present = [r["acc"] for r in row if r is not None]
        # XP-8: a best only where the row has one: all cells equal (all zero, say) marks none
        best = max(present) if len(set(present)) > 1 else None
        accs = [_accuracy_cell(r, best) for r in row]
        thinks = ["–" if r is None else f"{r['thinking_mean']:.1f}" for r in row]
        lines.append(f"| {method} | {setting} | " + " | ".join(accs + thinks) + " |")
    lines += ["", details_table(results)]
    return "\n".join(lines) + "\n"


def _accuracy_cell(record, best: float | None) -> str:
    if record is None:
        return "–"
    text = f"{record['acc']:.3f} ({record['se']:.3f})"
    return f"**{text}**" if record["acc"] == best else text


def details_table(results: dict) -> str:
    """Per cell: answered fraction, replies at the token limit, median thinking, sparsity reached,
    the compression report's mean relative objective per token source, prune and eval time."""
    sources = sorted({k for c in results["cells"] for k in c["objective"]["relative_objective_by_source_mean"]})
    head = ["method", "sparsity", "calibration", "acc@1", "answered", "hit limit", "think median", "zeros",
            *[f"rel. obj. {s}" for s in sources], "prune s", "eval s"]
    lines = ["| " + " | ".join(head) + " |", "| --- | --- | --- |" + " ---: |" * (len(head) - 3)]
    d = results["dense"]
    lines.append(f"| dense | 0% | – | {d['acc']:.3f} | {d['answered']:.3f} | {d['stopped_at_limit']} | "
                 f"{d['thinking_median']:g} | 0 |" + " – |" * len(sources) + f" – | {d['eval_s']:.1f} |")
    for c in results["cells"]:
        obj = c["objective"]["relative_objective_by_source_mean"]
        lines.append(
            f"| {c['method']} | {c['setting']} | {c['calibration']} | {c['acc']:.3f} | {c['answered']:.3f} | "
            f"{c['stopped_at_limit']} | {c['thinking_median']:g} | {c['objective']['sparsity_reached']:.3f} | "
            + " | ".join("–" if obj.get(s) is None else f"{obj[s]:.2e}" for s in sources)
            + f" | {c['prune_s']:.1f} | {c['eval_s']:.1f} |"
        )
    return "\n".join(lines)


def plot_results(results: dict, path) -> Path:
    """Accuracy (± SE) and mean thinking tokens against sparsity, one panel column per method and one
    line per calibration; N:M patterns as unconnected stars at their sparsity; the dense model dashed.
    Written to a temporary file and renamed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = list(dict.fromkeys(c["method"] for c in results["cells"]))
    cals, dense = _calibrations(results), results["dense"]
    fig = Figure(figsize=(4.2 * len(methods), 7.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(methods), squeeze=False, sharex=True)
    for col, method in enumerate(methods):
        ax_acc, ax_think = axes[0][col], axes[1][col]
        for cal in cals:
            colour, marker = STYLE.get(cal, ("black", "x"))
            mine = [c for c in results["cells"] if c["method"] == method and c["calibration"] == cal]
            line = sorted((c for c in mine if c["sparsity"] is not None), key=lambda c: c["sparsity"])
            nm = [c for c in mine if c["sparsity"] is None]
            if line:
                xs = [100 * c["sparsity"] for c in line]
                ax_acc.errorbar(xs, [c["acc"] for c in line], yerr=[c["se"] for c in line], color=colour,
                                marker=marker, capsize=3, label=cal)
                ax_think.plot(xs, [c["thinking_mean"] for c in line], color=colour, marker=marker, label=cal)
            for c in nm:
                x = 100 * c["nominal_sparsity"]
                ax_acc.errorbar([x], [c["acc"]], yerr=[c["se"]], color=colour, marker="*", markersize=11,
                                capsize=3, linestyle="none", label=f"{cal} {c['pattern']}")
                ax_think.plot([x], [c["thinking_mean"]], color=colour, marker="*", markersize=11, linestyle="none",
                              label=f"{cal} {c['pattern']}")
        ax_acc.axhline(dense["acc"], color="black", linestyle="--", linewidth=1, label="dense")
        ax_think.axhline(dense["thinking_mean"], color="black", linestyle="--", linewidth=1, label="dense")
        ax_think.axhline(results["settings"]["max_new_tokens"], color="grey", linestyle=":", linewidth=1,
                         label="token limit")
        ax_acc.set_title(method)
        ax_acc.set_ylim(-0.03, 1.03)
        ax_acc.set_ylabel("acc@1 (± SE)")
        ax_think.set_ylabel("mean thinking tokens")
        ax_think.set_xlabel("sparsity (%)")
        for ax in (ax_acc, ax_think):
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower left")
    axes[1][0].legend(fontsize=8, loc="upper left")
    s = results["settings"]
    fig.suptitle(f"{s.get('model_name', 'model')}: {dense['problems']} held-out problems,\n"
                 f"calibration {s['token_budget']} tokens per mode", fontsize=10)
    return save_figure_atomic(fig, path)


def save_figure_atomic(fig, path) -> Path:
    """``fig`` as PNG at ``path`` through a temporary file in the same folder."""
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    return Path(path)


def write_outputs(results: dict, out_dir, *, overwrite: bool = False, plot: bool = True) -> Path:
    """results.json, results.md (and results.png) in ``out_dir``, all or nothing (temporary directory + rename)."""
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        (tmp / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
        (tmp / "results.md").write_text(markdown_tables(results))
        if plot:
            plot_results(results, tmp / "results.png")
    return Path(out_dir)
