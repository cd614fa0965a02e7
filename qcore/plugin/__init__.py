"""The plugin core: hook specifications, entry-point loading and the registries."""
from .hookspecs import hookimpl, hookspec
from .manager import PluginRecord, get_manager

__all__ = ["hookimpl", "hookspec", "PluginRecord", "get_manager"]
