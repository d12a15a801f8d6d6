"""FiftyOne plugin entry point: registers the SSL-curation operators.

FiftyOne re-executes this module on every listing and call, so it stays cheap: torch and the library are
imported inside the operators' methods, and the operators module only inside ``register`` (so that importing this
file outside FiftyOne, e.g. by a test collector, has no side effects).
"""

import os
import sys

try:
    import fo_plugin  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # plugin folder copied without installing: use the library that ships beside this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def register(p):
    from .operators import OPERATORS

    for op in OPERATORS:
        p.register(op)
