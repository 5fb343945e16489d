"""The foundation layer: config machinery, errors, distributed helpers, precision, jsonl, the run-directory layout.

Nothing here imports any other package of the project; every other package may import it.
"""
