"""The newcomer demo: `make demo` (or `python -m demo` from the repository root)."""
