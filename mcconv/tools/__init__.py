"""mcconv's tools: the command line and what it needs (suites, GPU tables, plan, bench, tune, inspect).

Apart from the library: tools import mcconv's public surface, and the library imports nothing here.
"""
