"""gsmile: explain why a generative model produced its output.

>>> import gsmile
>>> exp = gsmile.explain("What is the capital of France?", n_samples=100, random_state=0)
>>> exp.top(3)
"""

from .explainer import Explainer, explain
from .explanation import Explanation

__all__ = ["Explainer", "Explanation", "explain"]
__version__ = "0.1.0"
