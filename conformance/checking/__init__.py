"""The checking library: rule checks (``checks``), oracles (``oracles``), hypothesis strategies
(``strategies``), tolerances (``tolerances``), golden vectors (``golden``, ``golden_check``), the
tiny-model fixtures of the model-level tests (``fixture_models``) and test helpers (``helpers``,
``fast_checks``)."""
