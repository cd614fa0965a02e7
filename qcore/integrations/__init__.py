"""Framework adapters (optional extras).

Each adapter is a submodule imported explicitly, so ``import qcore`` never imports a framework::

    from qcore.integrations import torch as qtorch      # pip install "qcore[torch]"
    from qcore.integrations import sklearn as qsk       # scikit-learn is a qcore dependency

Importing an adapter whose framework is not installed raises an ``ImportError`` that says what to install.
See ``docs/integrations.md``.
"""

__all__ = ["torch", "sklearn"]
