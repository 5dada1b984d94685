"""rac.reference.contract: the rules every implementation shares, importing nothing else of rac.

The bottom layer of the package (CONTRIBUTING.md, "Layers"): ``rac.reference``, ``rac.fast``
and the ``rac`` command import it; it imports none of them.

- ``validate``: argument checks with messages that name the argument (GEN-5);
- ``patterns``: ``Pattern``, ``parse_pattern``, exact counts ``pruned_count`` (NM-1, CNT-1);
- ``registry``: the method registry, one ``Method`` entry per pruner (GEN-1, CNT-2);
- ``models``: what the implementations need to know about a Hugging Face causal LM;
- ``atomic``: all-or-nothing writes of files and directories (every writer of the project, the
  reference's ``CalibrationSet.save`` included).
"""

from . import registry
from .models import context_length, decoder_blocks, eval_mode, forward_with_cache, text_config
from .patterns import PATTERN_KINDS, Pattern, check_sparsity_for_pattern, parse_pattern, pruned_count
from .registry import Method, Option, check_request, register
from .validate import (
    SYMMETRY_RTOL,
    as_float64,
    as_real_tensor,
    check_choice,
    check_finite,
    check_hessian,
    check_mask,
    check_sparsity,
    check_weight,
)

__all__ = [
    "Method", "Option", "PATTERN_KINDS", "Pattern", "SYMMETRY_RTOL", "as_float64", "as_real_tensor", "check_choice",
    "check_finite", "check_hessian", "check_mask", "check_request", "check_sparsity", "check_sparsity_for_pattern",
    "check_weight", "context_length", "decoder_blocks", "eval_mode", "forward_with_cache", "parse_pattern",
    "pruned_count", "register", "registry", "text_config",
]
