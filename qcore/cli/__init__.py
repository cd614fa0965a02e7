"""The ``qcore`` command line."""
