"""Raw dataset layouts: one module per dataset with its fixed tables, balancing rules and indexer.

``index_names(paths)`` turns the relative file names of a download into the
dirmap table (pure, no filesystem access); ``index(raw_root)`` walks the tree
first. They live here, apart from the scenario factories of the same names in
:mod:`streamcl.benchmarks`.
"""

# The layouts are the submodules (core50, icubworld, ilab, toybox); the package itself exports nothing.
__all__: list = []
