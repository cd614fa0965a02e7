"""qcore's built-in plugins.  They register through the ``qcore`` entry-point group, like any third party."""
