"""Sessions: `nox -s lint plain conformance selftest conformance_llmcompressor` is the project's test
command (README, .ci/run).

    nox -s lint                                 # ruff with the rules of pyproject.toml
    nox -s plain                                # a plain install (no extras): every rac subcommand starts
    nox -s conformance                          # the suite against the reference, then rac.fast
    nox -s conformance -- --port pkg.mod:obj    # ... against any port (docs/spec.md)
    nox -s selftest                             # the suite must reject every mutant port

CI installs a CPU build of torch by exporting PIP_CONSTRAINT=.ci/constraints-cpu.txt;
without it pip picks the torch wheel it would pick for you (CUDA on a GPU machine).
"""

from pathlib import Path

import nox

nox.options.sessions = ["lint", "plain", "conformance", "selftest"]
nox.options.reuse_existing_virtualenvs = True


def _install(session):
    # a real (non-editable) install: tests import rac.* as a user would get it
    session.install(".[test]")


#: Ports `nox -s conformance` checks when no `--port` is given: the reference and rac.fast.
DEFAULT_PORTS = ("rac.reference", "rac.fast")


@nox.session
def lint(session):
    """ruff with the rules and line length configured in pyproject.toml ([tool.ruff])."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")


@nox.session
def plain(session):
    """`pip install .` without extras, then every `rac` subcommand's --help, `rac --version` and `rac layer`:
    the commands must start on a plain install (hypothesis, pytest and matplotlib are test extras)."""
    session.install(".")
    session.run("rac", "--help", silent=True)
    session.run("rac", "--version")
    for command in ("layer", "prune", "calibrate", "eval", "experiment", "diagnose"):
        session.run("rac", command, "--help", silent=True)
    session.run("rac", "layer", "--in", "64", "--out", "16", "--tokens", "128")


@nox.session
def conformance(session):
    """The conformance suite against the reference and rac.fast (FAST-*/PREC-* included), or `-- --port X`.

    The second port skips the port-independent "suite" tests (the reference's own building
    blocks, REF-1..3, OBJ-1): they already ran with the first and do not depend on the port.
    """
    _install(session)
    if any(arg == "--port" or arg.startswith("--port=") for arg in session.posargs):
        session.run("pytest", "conformance", *session.posargs)
        return
    first, *others = DEFAULT_PORTS
    session.run("pytest", "conformance", f"--port={first}", *session.posargs)
    for port in others:
        session.run("pytest", "conformance", f"--port={port}", "--level=layer,calibration,model", *session.posargs)


@nox.session
def bench(session):
    """rac.fast vs rac.reference and vs the bounds through the interleaved harness, and the model benchmarks;
    not a default session.

    Saves docs/bench/compare-{layer,phase1,phase2}-cpu-<UTC time>.json (conformance/benchmarks/
    bench_compare.py: every case at 1 and 2 threads, implementations interleaved round by round,
    bounds from bounds.py) and model-cpu-<UTC time>.json (bench_model.py: Phase II on the fixture,
    memory); summarise with `python conformance/benchmarks/summarise.py <json>`. Options go to the
    layer comparison, e.g. `nox -s bench -- --sizes 1024 --threads 1`.
    """
    import datetime

    _install(session)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%MZ")
    session.run("python", "conformance/benchmarks/bench_compare.py", "layer",
                f"--out=docs/bench/compare-layer-cpu-{stamp}.json", *session.posargs)
    for kind in ("phase1", "phase2"):
        session.run("python", "conformance/benchmarks/bench_compare.py", kind,
                    f"--out=docs/bench/compare-{kind}-cpu-{stamp}.json")
    session.run("pytest", "conformance/benchmarks/bench_model.py", "--benchmark-only", "-p", "no:cacheprovider",
                "--report-dir=", "--test-timeout=0", f"--benchmark-json=docs/bench/model-cpu-{stamp}.json")


@nox.session
def selftest(session):
    """Every deliberately broken port must be rejected, naming the rule it broke."""
    _install(session)
    session.run("python", "-m", "rac.conformance.harness.selftest", *session.posargs)


@nox.session
def conformance_llmcompressor(session):
    """The layer level of the suite against llm-compressor's SparseGPT and Wanda (docs/ports/llmcompressor.md).

    llm-compressor is installed only here (extra `llmcompressor`, pinned). Its known
    deviations are listed in conformance/adapters/llmcompressor.xfail and reported as
    xfail; the session fails on a new failure, or on a listed one that now passes.
    Hypothesis runs the fixed "ci" examples so the verdicts do not change between runs.
    """
    session.install(".[test,llmcompressor]")
    session.env.setdefault("RAC_HYPOTHESIS_PROFILE", "ci")
    session.run(
        "pytest",
        "conformance",
        "--level",
        "layer",
        "--port",
        "rac.conformance.adapters.llmcompressor",
        *session.posargs,
    )
    # the reproductions quoted in docs/ports/llmcompressor.md still reproduce
    session.run("pytest", "docs/ports/test_llmcompressor_repros.py", "-q")
    # rac calibrate's dataset and recipe give llm-compressor's SparseGPT rac.fast's Hessians (CAL-14), and the
    # rac calibrate command itself (it needs datasets, which llm-compressor brings)
    session.run("pytest", "conformance/project/test_calibrate_llmcompressor.py",
                "conformance/project/test_calibrate.py", "-q", "-p", "no:cacheprovider")


@nox.session
def minimums(session):
    """The declared minimum versions (.ci/constraints-minimum.txt; setuptools at the build floor) and the CLI
    smoke tests: every command starts, rac prune and rac eval run on the bundled model, the CLI and
    practitioner tests pass. Not a default session (it downloads the old releases)."""
    session.env["PIP_CONSTRAINT"] = str(Path(".ci/constraints-minimum.txt").resolve())
    session.install("torch==2.13.0", "setuptools==77.0.3", "wheel")
    session.install("--no-build-isolation", ".[test]")
    session.run("python", "-c", "import transformers, numpy, scipy, tokenizers, safetensors; print('minimums:', "
                "transformers.__version__, numpy.__version__, scipy.__version__, tokenizers.__version__, "
                "safetensors.__version__)")
    for command in ("prune", "calibrate", "eval", "experiment", "diagnose", "layer"):
        session.run("rac", command, "--help", silent=True)
    # the bundled default run (CLI-4) decodes 64 prompts and 100 replies: minutes on a loaded CPU
    session.run("pytest", "conformance/project/test_cli.py", "conformance/project/test_practitioner.py", "-q",
                "-p", "no:cacheprovider", "--test-timeout=1800", *session.posargs)


@nox.session
def bench_llmcompressor(session):
    """rac.fast against llm-compressor's SparseGPT and Wanda on the same W and H, through the interleaved
    harness (time, objective, bound; docs/benchmarks.md). Not a default session.

    Saves docs/bench/compare-llmcompressor-cpu-<UTC time>.json; options go to bench_compare.py, e.g.
    `nox -s bench_llmcompressor -- --sizes 4096 --methods sparsegpt`.
    """
    import datetime

    session.install(".[test,llmcompressor]")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%MZ")
    session.run("python", "conformance/benchmarks/bench_compare.py", "llmcompressor",
                f"--out=docs/bench/compare-llmcompressor-cpu-{stamp}.json", *session.posargs)
