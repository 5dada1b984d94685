"""DEV-3: every command decodes and evaluates on the device it was given (docs/spec.md section 11).

No test machine of this project has a GPU, so the device is faked: CUDA is reported available and
moving a module to "cuda" is recorded instead of done. What is checked is the order of events: the
model was sent to the device before the first trace was decoded (Phase I) and before the first
reply was generated (evaluation). Before this rule, ``rac prune --device cuda`` decoded a 7B
model's traces on the CPU.
"""

from __future__ import annotations

import pytest
import torch

from rac.cli.main import main
from rac.conformance.checking.helpers import req

QUICK = ["--num-prompts", "2", "--max-new-tokens", "4", "--quiet"]


class _Stop(Exception):
    """Raised by the fakes once the device at the start of generation is known."""


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA "present" with 80 GiB free; Module.to("cuda") recorded, not done. Returns the record."""
    moves: list = []
    real_to = torch.nn.Module.to

    def to(self, *args, **kwargs):
        device = args[0] if args else kwargs.get("device")
        if device is not None and "cuda" in str(device):
            moves.append(str(device))
            return self
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80 * 2**30, 80 * 2**30))
    return moves


def _stop_at(monkeypatch, module, name, record, key, moves):
    def fake(*args, **kwargs):
        record[key] = list(moves)
        raise _Stop

    monkeypatch.setattr(module, name, fake)


@req("DEV-3")
@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_dev_3_prune_decodes_and_evaluates_on_its_device(fake_cuda, monkeypatch, device):
    """DEV-3: `rac prune --device cuda` (and "auto" where CUDA is present) puts the model on the device
    before the dense evaluation generates and before Phase I decodes."""
    import rac.cli.evaluate as evaluate
    import rac.fast.calibration as fast_calibration

    seen: dict = {}
    _stop_at(monkeypatch, evaluate, "generate_batch", seen, "evaluation", fake_cuda)
    with pytest.raises(_Stop):
        main(["prune", *QUICK, "--num-eval", "1", "--device", device])
    assert seen["evaluation"] and seen["evaluation"][-1].startswith("cuda"), seen
    fake_cuda.clear()
    _stop_at(monkeypatch, fast_calibration, "generate_traces", seen, "phase1", fake_cuda)
    with pytest.raises(_Stop):
        main(["prune", *QUICK, "--no-eval", "--device", device])
    assert seen["phase1"] and seen["phase1"][-1].startswith("cuda"), seen


@req("DEV-3")
def test_dev_3_eval_generates_on_its_device(fake_cuda, monkeypatch, tmp_path):
    """DEV-3: `rac eval` picks the device as `rac prune` does (CUDA when present) and generates there."""
    import rac.cli.evaluate as evaluate
    from rac.fixtures import TOY_REASONER, TOY_TEST

    seen: dict = {}
    _stop_at(monkeypatch, evaluate, "generate_batch", seen, "evaluation", fake_cuda)
    with pytest.raises(_Stop):
        main(["eval", "--model", str(TOY_REASONER), "--problems", str(TOY_TEST), "--limit", "1", "--quiet"])
    assert seen["evaluation"] == ["cuda"], seen
