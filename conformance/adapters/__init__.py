"""Adapters that make third-party implementations ports of the suite (docs/ports/)."""
