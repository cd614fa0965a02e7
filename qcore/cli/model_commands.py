"""The whole-model sub-commands of ``qcore``: ``quantize``, ``inspect``, ``dequantize``, ``report``, ``bench``.

``register(subparsers)`` adds their parsers (called from :mod:`qcore.cli.main`).  Errors are raised as
exceptions; ``main`` turns them into one clean line and exit status 2.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

#: top-level keys of a rules file that are not scheme options
_CONFIG_KEYS = ("scheme", "budget_bits", "include", "exclude", "rules")


def register(sub) -> None:
    sp = sub.add_parser("quantize", help="quantize a .safetensors/.npz model into a qcore .safetensors file",
                        description="Quantize every float tensor of 2+ dimensions (or those chosen by --include/--exclude "
                                    "and rules) and write a qcore quantized-model file.")
    sp.add_argument("input", help="model file (.safetensors or .npz)")
    sp.add_argument("-o", "--output", required=True, help="quantized model to write (.safetensors)")
    sp.add_argument("--scheme", help="scheme for every tensor (default linear; 'mixed' plans bits per tensor)")
    sp.add_argument("--bits", type=int, help="bits per code (fixed schemes; for mixed: the widest candidate)")
    sp.add_argument("--granularity", choices=("tensor", "channel", "group"), help="linear: default channel")
    sp.add_argument("--group-size", type=int, help="group size for --granularity group")
    sp.add_argument("--axis", type=int, help="channel axis (default 0)")
    sp.add_argument("--symmetric", action="store_true", default=None, help="linear: signed codes, no zero point")
    sp.add_argument("--budget-bits", type=float, help="mixed: average bits per weight, parameters counted")
    sp.add_argument("--target-sqnr", type=float, help="mixed: smallest candidate reaching this SQNR (dB) per tensor")
    sp.add_argument("--candidates", help="mixed: comma-separated 'scheme:bits[:granularity[:group_size]]'")
    sp.add_argument("--include", action="append", metavar="GLOB", help="quantize only matching tensors (repeatable)")
    sp.add_argument("--exclude", action="append", metavar="GLOB", help="keep matching tensors as they are (repeatable)")
    sp.add_argument("--config", metavar="RULES.toml", help="options and [rules.\"GLOB\"] tables (see docs/models.md)")
    sp.add_argument("--json", action="store_true", help="print the report as JSON")
    sp.add_argument("--quiet", action="store_true", help="no progress bar, no table")
    sp.set_defaults(func=cmd_quantize)

    sp = sub.add_parser("inspect", help="per-tensor table of a quantized model file (header only, no plugin needed)")
    sp.add_argument("file")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_inspect)

    sp = sub.add_parser("dequantize", help="write a quantized model back as plain float safetensors")
    sp.add_argument("file")
    sp.add_argument("-o", "--output", required=True, help="plain .safetensors file to write")
    sp.set_defaults(func=cmd_dequantize)

    sp = sub.add_parser("report", help="size and SQNR per layer of a quantized model against its float original")
    sp.add_argument("original", help="the float model (.safetensors or .npz)")
    sp.add_argument("quantized", help="the quantized model (.safetensors written by qcore quantize)")
    sp.add_argument("--plot", metavar="FILE.png", help="also draw bits and SQNR per layer (matplotlib)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("bench", help="time and peak memory of quantizing a synthetic model (int8 per channel, mixed)")
    sp.add_argument("--params", type=float, default=4e6, help="model size in float32 parameters (default 4e6)")
    sp.add_argument("--budget-bits", type=float, default=4.5, help="budget of the mixed run (default 4.5)")
    sp.add_argument("--candidates", help="mixed candidates (default: the built-in list)")
    sp.add_argument("--only", choices=("int8", "mixed"), help="run one configuration")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_bench)


# -- helpers ---------------------------------------------------------------------------------------------
def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024.0
    return f"{n:.2f} GB"  # pragma: no cover


def _fmt_snr(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.2f}"


def _describe(row: dict) -> str:
    opts = row.get("options") or {}
    if row.get("scheme") is None:
        return str(opts.get("dtype", ""))
    g = opts.get("granularity")
    if g == "group":
        return f"group{opts.get('group_size')}"
    return str(g or "")


def format_table(rows: list[dict]) -> str:
    """The per-tensor table printed by quantize/inspect/report, with a total line."""
    name_w = max([len(r["name"]) for r in rows] + [6])
    name_w = min(name_w, 48)
    head = f"{'tensor':{name_w}s} {'scheme':8s} {'bits':>4s} {'layout':>10s} {'shape':>14s} {'fp32':>10s} {'quantized':>10s} {'ratio':>6s} {'SQNR dB':>8s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        name = r["name"] if len(r["name"]) <= name_w else "…" + r["name"][-(name_w - 1):]
        shape = "x".join(str(s) for s in r["shape"]) or "()"
        ratio = r["bytes_fp32"] / r["bytes_q"] if r["bytes_q"] else float("inf")
        lines.append(f"{name:{name_w}s} {str(r['scheme'] or 'kept'):8s} {str(r['bits'] if r['bits'] is not None else '-'):>4s} "
                     f"{_describe(r):>10s} {shape:>14s} {_fmt_bytes(r['bytes_fp32']):>10s} {_fmt_bytes(r['bytes_q']):>10s} "
                     f"{ratio:6.2f} {_fmt_snr(r['sqnr_db']):>8s}")
    fp = sum(r["bytes_fp32"] for r in rows)
    q = sum(r["bytes_q"] for r in rows)
    quant = [r for r in rows if r["scheme"] is not None]
    count = sum(r["bytes_fp32"] // 4 for r in quant)
    avg = 8.0 * sum(r["bytes_q"] for r in quant) / count if count else float("nan")
    lines.append("-" * len(head))
    lines.append(f"{len(rows)} tensors, {len(quant)} quantized: {_fmt_bytes(fp)} -> {_fmt_bytes(q)} "
                 f"({fp / q if q else float('inf'):.2f}x smaller), {avg:.3f} bits per quantized weight (parameters counted)")
    return "\n".join(lines)


def _jsonable(rows):
    out = []
    for r in rows:
        r = dict(r)
        v = r.get("sqnr_db")
        if isinstance(v, float) and not math.isfinite(v):
            r["sqnr_db"] = None
        out.append(r)
    return out


def load_config(path: str) -> dict[str, Any]:
    """A rules file (TOML): top-level ``scheme``, ``budget_bits``, ``include``, ``exclude``, any scheme option,
    and ``[rules."GLOB"]`` tables of per-tensor options (``skip = true`` keeps a tensor as it is)."""
    import tomllib

    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    rules = cfg.get("rules", {})
    if not isinstance(rules, dict) or not all(isinstance(v, dict) for v in rules.values()):
        raise ValueError(f"{path}: [rules] must hold tables, e.g. [rules.\"*.bias\"] with bits = 8")
    return cfg


# -- commands --------------------------------------------------------------------------------------------
def cmd_quantize(args) -> int:
    from ..model import quantize_model

    cfg: dict[str, Any] = load_config(args.config) if args.config else {}
    scheme = args.scheme or cfg.get("scheme", "linear")
    options = {k: v for k, v in cfg.items() if k not in _CONFIG_KEYS}
    for key, val in (("bits", args.bits), ("granularity", args.granularity), ("group_size", args.group_size),
                     ("axis", args.axis), ("symmetric", args.symmetric), ("target_sqnr", args.target_sqnr),
                     ("candidates", args.candidates)):
        if val is not None:
            options[key] = val
    if scheme == "linear" and "granularity" not in options:
        options["granularity"] = "channel"
    if options.get("granularity") == "group" and "group_size" in options and scheme == "linear":
        pass
    budget = args.budget_bits if args.budget_bits is not None else cfg.get("budget_bits")
    if scheme == "mixed" and budget is None and options.get("target_sqnr") is None:
        budget = 4.5
    include = args.include if args.include else cfg.get("include")
    exclude = args.exclude if args.exclude else cfg.get("exclude")
    t0 = time.perf_counter()
    qm = quantize_model(args.input, scheme, include=include, exclude=exclude, rules=cfg.get("rules"),
                        budget_bits=budget, progress=not args.quiet, **options)
    t1 = time.perf_counter()
    size = qm.save(args.output)
    rows = qm.report()
    if args.json:
        print(json.dumps({"output": args.output, "file_size": size, "seconds": t1 - t0, "tensors": _jsonable(rows)}, indent=2))
    elif not args.quiet:
        print(format_table(rows))
        print(f"wrote {args.output} ({_fmt_bytes(size)}) in {t1 - t0:.2f} s")
    return 0


def cmd_inspect(args) -> int:
    from ..model import inspect_file

    desc = inspect_file(args.file)
    if args.json:
        desc = dict(desc, tensors=_jsonable(desc["tensors"]))
        print(json.dumps(desc, indent=2))
        return 0
    print(f"{desc['path']}: qcore quantized model, format version {desc['format_version']}, "
          f"written by qcore {desc['qcore_version']}, {_fmt_bytes(desc['file_size'])}")
    plugins = sorted({f"{r['plugin'].get('distribution')} (scheme {r['scheme']})" for r in desc["tensors"] if r["scheme"]})
    if plugins:
        print("needs: " + ", ".join(plugins))
    print(format_table(desc["tensors"]))
    return 0


def cmd_dequantize(args) -> int:
    import numpy as np

    from ..model import load_quantized
    from ..model.safetensors_io import Entry, write_safetensors
    from ..tensor import QTensor

    qm = load_quantized(args.file)
    entries = []
    for name, t in qm.items():
        if isinstance(t, QTensor):
            entries.append(Entry(name, "F32", t.shape, 4 * t.size, lambda t=t: t.dequantize()))
        else:
            entries.append(Entry.of(name, np.ascontiguousarray(t)))
    size = write_safetensors(args.output, entries, {"format": "np", "dequantized_from": os.path.basename(args.file)})
    print(f"wrote {args.output}: {len(entries)} float tensors, {_fmt_bytes(size)}")
    return 0


def cmd_report(args) -> int:
    from ..model import load_quantized, load_tensors

    ref = load_tensors(args.original)
    qm = load_quantized(args.quantized)
    missing = [n for n in qm.quantized if n not in ref]
    if missing:
        raise ValueError(f"{args.original} lacks tensors of the quantized model: {missing[:5]}")
    rows = qm.report(reference=ref)
    if args.json:
        print(json.dumps(_jsonable(rows), indent=2))
    else:
        print(format_table(rows))
    if args.plot:
        plot_report(rows, args.plot, title=f"{os.path.basename(args.quantized)} vs {os.path.basename(args.original)}")
        if not args.json:
            print(f"wrote {args.plot}")
    return 0


def plot_report(rows: list[dict], path: str, title: str = "") -> None:
    """Bits per weight and SQNR per quantized tensor, colored by scheme (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    quant = [r for r in rows if r["scheme"] is not None]
    if not quant:
        raise ValueError("nothing to plot: the model has no quantized tensor")
    names = [r["name"] for r in quant]
    bits = [8.0 * r["bytes_q"] / (r["bytes_fp32"] / 4) for r in quant]
    snr = [r["sqnr_db"] if r["sqnr_db"] is not None and math.isfinite(r["sqnr_db"]) else 0.0 for r in quant]
    schemes = sorted({r["scheme"] for r in quant})
    palette = plt.get_cmap("tab10")
    color = {s: palette(i % 10) for i, s in enumerate(schemes)}
    colors = [color[r["scheme"]] for r in quant]
    labels = [f"{r['scheme']} {r['bits']}b {_describe(r)}" for r in quant]
    n = len(quant)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6.0, 0.45 * n + 2.5), 7.5), sharex=True)
    xs = range(n)
    ax1.bar(xs, bits, color=colors)
    ax1.set_ylabel("bits per weight\n(parameters counted)")
    ax1.set_ylim(0, max(bits) * 1.25)
    avg = 8.0 * sum(r["bytes_q"] for r in quant) / sum(r["bytes_fp32"] / 4 for r in quant)
    ax1.axhline(avg, color="k", lw=0.8, ls="--", label=f"model average {avg:.2f}")
    ax1.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=color[s]) for s in schemes] + ax1.get_legend_handles_labels()[0],
               labels=schemes + [f"model average {avg:.2f}"], fontsize=8, loc="upper right")
    ax2.bar(xs, snr, color=colors)
    ax2.set_ylabel("SQNR (dB)")
    ax2.set_xticks(list(xs))
    ax2.set_xticklabels([f"{nm}\n{lab}" for nm, lab in zip(names, labels)], rotation=60, ha="right", fontsize=7)
    fig.suptitle(title or "qcore report")
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_bench(args) -> int:
    from ..model.bench import run_bench

    results = run_bench(params=int(args.params), budget_bits=args.budget_bits, candidates=args.candidates,
                        only=args.only, log=None if args.json else sys.stdout)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0
