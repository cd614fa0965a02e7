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
    if args.json:  # loaded plugins only: every record provides names (the table also lists disabled ones)
        print(json.dumps([r.as_dict() for r in records], indent=2))
        return 0
    disabled = disabled_plugins()
    if not records and not disabled:
        print("no third-party plugins installed (qcore plugins --all lists the built-ins)")
        return 0
    if not records:
        print("no third-party plugins loaded (qcore plugins --all lists the built-ins)")
    rows = [("PLUGIN", "DISTRIBUTION", "VERSION", "HOOKS", "PROVIDES")]
    for r in records:
        provided = [f"{k.plural}: {', '.join(getattr(r, k.plural))}" for k in KINDS if getattr(r, k.plural)]
        dist = r.distribution + (" (built-in)" if r.builtin else "")
        rows.append((r.name, dist, r.version, ", ".join(r.hooks) or "-", "; ".join(provided) or "-"))
    for name, dist, version, why in disabled:
        rows.append((name, dist, version, "-", f"disabled ({why})"))
    if len(rows) > 1:
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])
    return 0


def disabled_plugins() -> list[tuple[str, str, str, str]]:
    """Installed third-party plugins that QCORE_DISABLE_PLUGINS / QCORE_LOAD_PLUGINS keep from loading:
    ``(entry point, distribution, version, reason)``."""
    from importlib import metadata

    from ..plugin.manager import BUILTIN_DISTRIBUTION, ENTRY_POINT_GROUP, _env_list, _normalize

    allow = _env_list("QCORE_LOAD_PLUGINS")
    deny = _env_list("QCORE_DISABLE_PLUGINS") or set()
    out, seen = [], set()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist
        dist_name = dist.metadata["Name"] if dist is not None else "<unknown>"
        norm = _normalize(dist_name)
        if norm == BUILTIN_DISTRIBUTION or (dist_name, ep.name) in seen:
            continue
        seen.add((dist_name, ep.name))
        version = dist.version if dist is not None else "?"
        if norm in deny:
            out.append((ep.name, dist_name, version, "QCORE_DISABLE_PLUGINS"))
        elif allow is not None and norm not in allow:
            out.append((ep.name, dist_name, version, "not in QCORE_LOAD_PLUGINS"))
    return out


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


class QcoreParser(argparse.ArgumentParser):
    """An ArgumentParser whose help can end with text computed only when help is shown (``epilog_fn``: the
    installed schemes, which needs the plugins loaded)."""

    epilog_fn = None

    def format_help(self) -> str:
        text = super().format_help()
        if self.epilog_fn is not None:
            text += "\n" + self.epilog_fn() + "\n"
        return text


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = QcoreParser(prog="qcore", description="Quantize neural-network tensors and models.")
    p.add_argument("--version", action="version", version=f"qcore {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=QcoreParser)

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
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except (QcoreError, ValueError, TypeError, KeyError, OSError) as exc:
        if os.environ.get("QCORE_DEBUG"):
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"qcore: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qcore: interrupted", file=sys.stderr)
        return 130


def _quiet_stdout() -> None:
    """The reader went away (``qcore inspect f | head -1``): point stdout at /dev/null so the interpreter's
    final flush does not print '[Errno 32] Broken pipe'."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # pragma: no cover - stdout without a file descriptor
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
