"""A scheme for the executor tests that fails on purpose where it runs (a Dask worker process imports this module:
tests/ is put on the workers' PYTHONPATH)."""
import os

from qcore_plugins.schemes.linear import LinearQuantizer


class FragileLinear(LinearQuantizer):
    """The linear scheme, except that fitting kills its process: ``die="once"`` the first time (when the file
    ``marker`` does not exist yet; it is created), ``die="always"`` every time."""

    name = "test_fragile_linear"
    options = {**LinearQuantizer.options, "die": "never", "marker": ""}

    def fit(self, x):
        die, marker = self.config["die"], self.config["marker"]
        if die == "always" or (die == "once" and not os.path.exists(marker)):
            if marker:
                open(marker, "w").close()
            os._exit(17)  # the worker process dies, as on a segfault or an out-of-memory kill
        return super().fit(x)
