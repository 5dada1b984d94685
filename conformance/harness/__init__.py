"""The suite's harness: loading a port (``ports``), expected failures (``expected``), the report
(``report``, ``measure``), time limits (``timeout``) and the self-test (``selftest``)."""
