"""The library beside main.py: one module per job, none of which imports main.

Importing the package loads nothing: each mode imports what it needs, so `--help` and flag
errors answer before torch loads.
"""
