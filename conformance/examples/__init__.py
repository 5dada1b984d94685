"""Example ports written from docs/porting.md alone (the self-test keeps them passing)."""
