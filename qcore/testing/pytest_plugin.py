"""qcore's pytest plugin (entry point ``pytest11``: ``qcore``; disable with ``-p no:qcore``).

Fixtures:

``qcore_plugins``
    A fresh process-wide :class:`qcore.plugin.manager.PluginManager` for one test: the built-in plugins load,
    **third-party entry points do not** (whatever is installed), and the previous manager comes back after
    the test.  Call ``qcore_plugins.register(plugin)`` — a module, an object with ``@qcore.hookimpl``
    functions, or a Quantizer/Observer/Kernel class — to add an in-process plugin for this test only.

``register_qcore_plugin``
    The same, as a function: ``register_qcore_plugin(plugin, name=None) -> name``.

Importing this module is cheap: qcore itself is imported when a fixture is first used.
"""
from __future__ import annotations

import pytest


class QcorePlugins:
    """What the ``qcore_plugins`` fixture gives a test."""

    def __init__(self, manager):
        self.manager = manager

    def register(self, plugin, name: str | None = None) -> str:
        """Register ``plugin`` (module, hookimpl namespace, or a scheme/observer/kernel class) for this test."""
        if isinstance(plugin, type):
            from qcore.testing import plugin_from_classes

            plugin = plugin_from_classes(plugin)
        return self.manager.register(plugin, name=name)

    def unregister(self, name: str) -> None:
        self.manager.unregister(name)

    def records(self):
        return self.manager.records()


@pytest.fixture
def qcore_plugins():
    """An isolated plugin manager for one test: built-ins only, no third-party autoload; restored after."""
    from qcore.testing import isolated_plugins

    with isolated_plugins() as manager:
        yield QcorePlugins(manager)


@pytest.fixture
def register_qcore_plugin(qcore_plugins):
    """``register_qcore_plugin(plugin, name=None) -> name``: an in-process plugin for this test only."""
    return qcore_plugins.register
