"""gsmile: explain why a generative model produced its output.

>>> import gsmile
>>> exp = gsmile.explain("What is the capital of France?", n_samples=100, random_state=0)
>>> exp.top(3)
"""

from .explainer import Explainer, explain
from .explanation import Explanation

__all__ = ["Explainer", "Explanation", "audit", "explain"]


def __getattr__(name: str):
    """``gsmile.audit``, imported on first use (``gsmile.audit(...)`` runs an audit)."""
    if name == "audit":
        import importlib

        return importlib.import_module(".audit", __name__)
    raise AttributeError(f"module 'gsmile' has no attribute {name!r}")
__version__ = "0.1.0"
