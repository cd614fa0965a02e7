"""``qcore`` command: argument parsing and dispatch.  Each sub-command lives in its own function.

Errors a user can cause (bad file, unknown scheme, bad option) print one clean line to stderr and exit 2;
no traceback.  ``QCORE_DEBUG=1`` shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import QcoreError


def cmd_plugins(args) -> int:
    """List plugins: name, distribution, version, hooks, names provided; built-ins only with ``--all``.

    A plugin that was skipped (failed import, raising hook) is reported as one ``qcore: warning:`` line on
    stderr; a name collision or strict-mode failure is the usual one-line error and exit status 2.
    """
    import warnings

    from ..api import plugins
    from ..plugin.manager import KINDS, PluginWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PluginWarning)
        try:
            records = plugins(all=args.all)
        finally:
            for w in caught:
                if issubclass(w.category, PluginWarning):
                    print(f"qcore: warning: {w.message}", file=sys.stderr)
                else:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if args.json:
        print(json.dumps([r.as_dict() for r in records], indent=2))
        return 0
    if not records:
        print("no third-party plugins installed (qcore plugins --all lists the built-ins)")
        return 0
    rows = [("PLUGIN", "DISTRIBUTION", "VERSION", "HOOKS", "PROVIDES")]
    for r in records:
        provided = [f"{k.plural}: {', '.join(getattr(r, k.plural))}" for k in KINDS if getattr(r, k.plural)]
        dist = r.distribution + (" (built-in)" if r.builtin else "")
        rows.append((r.name, dist, r.version, ", ".join(r.hooks) or "-", "; ".join(provided) or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])
    return 0


def cmd_schemes(args) -> int:
    from ..api import list_kernels, list_observers, list_planners, list_schemes, provider_of

    planners = set(list_planners())
    rows = ([("scheme", n) for n in list_schemes() if n not in planners] + [("planner", n) for n in sorted(planners)]
            + [("observer", n) for n in list_observers()] + [("kernel", n) for n in list_kernels()])
    for kind, name in rows:
        owner = provider_of(kind, name)
        print(f"{kind:9s} {name:16s} {owner}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(quiet=args.quiet)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(prog="qcore", description="Quantize neural-network tensors and models.")
    p.add_argument("--version", action="version", version=f"qcore {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    sp = sub.add_parser("plugins", help="list installed plugins")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument("--all", action="store_true", help="include the built-in plugins")
    sp.set_defaults(func=cmd_plugins)

    sp = sub.add_parser("schemes", help="list schemes, observers and kernels with the distribution providing each")
    sp.set_defaults(func=cmd_schemes)

    sp = sub.add_parser("demo", help="the main job on an embedded default (no download)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_demo)

    from .model_commands import register as register_model_commands

    register_model_commands(sub)  # quantize, inspect, dequantize, report, bench
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (QcoreError, ValueError, TypeError, KeyError, OSError) as exc:
        if os.environ.get("QCORE_DEBUG"):
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"qcore: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qcore: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
