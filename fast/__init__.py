"""rac.fast: the same maths as rac.reference, fast on a GPU and honest on a CPU.

Not implemented yet (tracked as issue 4). Until it is, this package exposes
nothing, and the conformance suite's built-in ports are the reference only.
"""
