"""The whole-model sub-commands of ``qcore``: ``quantize``, ``inspect``, ``dequantize``, ``report``, ``bench``.

``register(subparsers)`` adds their parsers (called from :mod:`qcore.cli.main`).  Errors are raised as
exceptions; ``main`` turns them into one clean line and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from typing import Any

from ..quantization.planner import Planner
from .checks import (UsageError, check_exists, check_output_file, check_output_folder, check_patterns_match,
                     input_files, quantized_kind)

#: top-level keys of a rules file that are not scheme options
_CONFIG_KEYS = ("scheme", "budget_bits", "include", "exclude", "rules")


DTYPE_CHOICES = ("float32", "float16", "bfloat16")


def _installed_schemes() -> str:
    try:
        from ..api import list_schemes

        return ", ".join(list_schemes())
    except Exception as exc:  # noqa: BLE001 - help must print even when a plugin is broken
        return f"(could not list: {exc})"


def _formats() -> list[str]:
    from ..model.formats import list_formats

    return list_formats()


def register(sub) -> None:
    sp = sub.add_parser("quantize", help="quantize a model (file, Hugging Face folder or shard index) into a qcore file, "
                                          "a compressed-tensors folder or a GGUF file",
                        description="Quantize every float tensor of 2+ dimensions (or those chosen by --include/--exclude "
                                    "and rules) and write a qcore quantized-model file (--format qcore), a "
                                    "compressed-tensors folder that transformers loads (--format compressed-tensors) or "
                                    "a GGUF file for llama.cpp (--format gguf: llama-family folders; without options, "
                                    "8-bit symmetric blocks of 32 with float16 scales, i.e. Q8_0; docs/deploy.md). "
                                    "Every option is checked before any work starts.")
    sp.epilog_fn = lambda: f"installed schemes: {_installed_schemes()}"
    sp.add_argument("input", help="model: .safetensors or .npz file, Hugging Face model folder, or model.safetensors.index.json")
    sp.add_argument("-o", "--output", required=True,
                    help="--format qcore: the .safetensors file to write (a folder with --max-shard-size); "
                         "compressed-tensors: the folder to write; gguf: the .gguf file to write")
    sp.add_argument("--format", choices=_formats(), default="qcore", help="output format (default: qcore)")
    sp.add_argument("--force", action="store_true", help="replace an existing output (default: refuse)")
    sp.add_argument("--max-shard-size", metavar="SIZE",
                    help="write shards of at most SIZE (e.g. 5GB, 500MB, 2GiB) plus model.safetensors.index.json "
                         "into the output folder (default: one file)")
    sp.add_argument("--workers", type=int, metavar="N",
                    help="quantize on a local Dask cluster of N single-threaded worker processes "
                         "(pip install \"qcore[dask]\")")
    sp.add_argument("--scheduler", metavar="ADDRESS",
                    help="quantize on the Dask cluster whose scheduler is at ADDRESS (tcp://host:8786); every "
                         "worker must see the input path")
    sp.add_argument("--scheme", help="scheme for every tensor (default: linear; 'mixed' plans bits per tensor)")
    sp.add_argument("--bits", type=int, help="bits per code (default: the scheme's: 8 for linear, 4 for log and "
                                             "kmeans; for mixed: the widest candidate)")
    sp.add_argument("--granularity", choices=("tensor", "channel", "group"),
                    help="(default: channel for linear and log, their default for weights)")
    sp.add_argument("--group-size", type=int, help="group size; only with --granularity group (default: 128)")
    sp.add_argument("--axis", type=int, help="channel axis for --granularity channel (default: 0)")
    sp.add_argument("--symmetric", action=argparse.BooleanOptionalAction, default=None,
                    help="linear: signed codes, no zero point; --no-symmetric: affine (default for weights: symmetric)")
    sp.add_argument("--budget-bits", type=float,
                    help="mixed only: average bits per weight, parameters counted (default for mixed: 4.5)")
    sp.add_argument("--target-sqnr", type=float,
                    help="mixed only, instead of --budget-bits: smallest candidate reaching this SQNR (dB) per tensor")
    sp.add_argument("--candidates", help="mixed only: comma-separated 'scheme:bits[:granularity[:group_size]]' "
                                          "(default: linear 2/3/4/8 per channel and group, kmeans 2-4, log 4-5)")
    sp.add_argument("--method", choices=("rtn", "gptq"), default="rtn",
                    help="rtn: round to nearest (default); gptq: minimise each layer's output error with the "
                         "Hessians of --hessians (docs/ptq.md)")
    sp.add_argument("--hessians", metavar="HESSIANS.safetensors", action="append",
                    help="per-layer input Hessians (qtorch.collect_hessians); needed by --method gptq, and with "
                         "--scheme mixed the candidates are judged by their output error on held-out folds; "
                         "repeat it to mix calibration sources with equal weight")
    sp.add_argument("--calibration", dest="calibration_alias", metavar="HESSIANS.safetensors", action="append",
                    help="deprecated spelling of --hessians")
    sp.add_argument("--include", action="append", metavar="GLOB", help="quantize only matching tensors (repeatable)")
    sp.add_argument("--exclude", action="append", metavar="GLOB", help="keep matching tensors as they are (repeatable)")
    sp.add_argument("--config", metavar="RULES.toml", help="options and [rules.\"GLOB\"] tables (see docs/models.md)")
    sp.add_argument("--json", action="store_true", help="print the report as JSON")
    sp.add_argument("--quiet", action="store_true", help="no progress bar, no table")
    sp.set_defaults(func=cmd_quantize)

    sp = sub.add_parser("inspect", help="per-tensor table of a quantized model (qcore file, compressed-tensors folder "
                                         "or GGUF file; header only, no plugin needed)")
    sp.add_argument("file", help="qcore .safetensors file, compressed-tensors folder or GGUF file")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_inspect)

    sp = sub.add_parser("dequantize", help="write a quantized model back as plain float safetensors")
    sp.add_argument("file", help="qcore .safetensors file, compressed-tensors folder or GGUF file")
    sp.add_argument("-o", "--output", required=True, help="plain .safetensors file to write")
    sp.add_argument("--force", action="store_true", help="replace an existing output (default: refuse)")
    sp.add_argument("--dtype", choices=DTYPE_CHOICES,
                    help="dtype of every float tensor written (default: each tensor's original dtype)")
    sp.set_defaults(func=cmd_dequantize)

    sp = sub.add_parser("report", help="size and SQNR per layer of a quantized model against its float original")
    sp.add_argument("original", help="the float model (.safetensors, .npz, Hugging Face folder or shard index)")
    sp.add_argument("quantized", help="the quantized model (qcore file, compressed-tensors folder or GGUF file)")
    sp.add_argument("--plot", metavar="FILE.png", help="also draw bits and SQNR per layer (matplotlib)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("bench", help="time and peak memory of quantizing a synthetic model (int8 per channel, mixed)")
    sp.add_argument("--params", type=float, default=4e6, help="model size in float32 parameters (default: 4e6)")
    sp.add_argument("--budget-bits", type=float, default=4.5, help="budget of the mixed run (default: 4.5)")
    sp.add_argument("--candidates", help="mixed candidates (default: the built-in list)")
    sp.add_argument("--only", choices=("int8", "mixed"), help="run one configuration (default: both)")
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


def _orig(row: dict) -> int:
    """Bytes of the tensor in its original dtype (bfloat16 models compare against 2 bytes per weight)."""
    return int(row.get("bytes_orig", row["bytes_fp32"]))


def _describe(row: dict) -> str:
    opts = row.get("options") or {}
    if opts.get("gguf_type"):  # a GGUF file says what each tensor is stored as
        return str(opts["gguf_type"])
    if row.get("scheme") is None:
        return ""
    g = opts.get("granularity")
    if g == "group":
        return f"group{opts.get('group_size')}"
    return str(g or "")


def _fmt_plan(row: dict) -> str:
    """The plan columns: the chosen candidate's output error on held-out data (``-`` if it was scored in-sample
    only) and on its own calibration data."""
    held = row.get("error") if row.get("held_out") else None
    ins = row.get("error_in_sample")
    return f" {'-' if held is None else f'{held:.3e}':>12s} {'-' if ins is None else f'{ins:.3e}':>13s}"


def format_table(rows: list[dict]) -> str:
    """The per-tensor table printed by quantize/inspect/report, with a total line."""
    name_w = max([len(r["name"]) for r in rows] + [6])
    name_w = min(name_w, 48)
    planned = any(r.get("error") is not None for r in rows)  # a plan judged on data: its errors are columns
    head = f"{'tensor':{name_w}s} {'scheme':8s} {'bits':>4s} {'layout':>10s} {'shape':>14s} {'dtype':>8s} {'original':>10s} {'quantized':>10s} {'ratio':>6s} {'SQNR dB':>8s}"
    if planned:
        head += f" {'held-out err':>12s} {'in-sample err':>13s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        name = r["name"] if len(r["name"]) <= name_w else "…" + r["name"][-(name_w - 1):]
        shape = "x".join(str(s) for s in r["shape"]) or "()"
        orig = _orig(r)
        ratio = orig / r["bytes_q"] if r["bytes_q"] else float("inf")
        lines.append(f"{name:{name_w}s} {str(r['scheme'] or 'kept'):8s} {str(r['bits'] if r['bits'] is not None else '-'):>4s} "
                     f"{_describe(r):>10s} {shape:>14s} {str(r.get('dtype', '')):>8s} {_fmt_bytes(orig):>10s} {_fmt_bytes(r['bytes_q']):>10s} "
                     f"{ratio:6.2f} {_fmt_snr(r['sqnr_db']):>8s}" + (_fmt_plan(r) if planned else ""))
    fp = sum(_orig(r) for r in rows)
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
_PLANNER_FLAGS = (("budget_bits", "--budget-bits"), ("target_sqnr", "--target-sqnr"), ("candidates", "--candidates"))


def _is_planner(q) -> bool:
    return isinstance(q, Planner)


def _parse_candidates(text: str) -> list[dict]:
    """``"linear:4:channel,kmeans:3"`` -> candidate dicts (:func:`qcore.quantization.candidates.parse_candidate`),
    each checked against its scheme now (a misspelled granularity or scheme is named as such, not reported later
    as 'no candidate applies')."""
    from ..api import get_quantizer
    from ..quantization.candidates import parse_candidate

    out = []
    for spec in [c.strip() for c in text.split(",") if c.strip()]:
        try:
            d = parse_candidate(spec)
        except ValueError as exc:
            raise UsageError(f"--candidates: {exc}") from None
        try:
            get_quantizer(d["scheme"], **{k: v for k, v in d.items() if k != "scheme"})
        except KeyError as exc:
            raise UsageError(f"--candidates: {spec!r}: {exc.args[0] if exc.args else exc}") from None
        except (TypeError, ValueError) as exc:
            raise UsageError(f"--candidates: {spec!r} is not a valid candidate: {exc}") from None
        out.append(d)
    if not out:
        raise UsageError("--candidates is empty")
    return out


def _options_from(args, cfg) -> tuple[str, dict, Any]:
    """The scheme, its options and the budget, from flags over the rules file; options that do not apply are
    refused here, before anything is read."""
    scheme = args.scheme or cfg.get("scheme", "linear")
    options = {k: v for k, v in cfg.items() if k not in _CONFIG_KEYS}
    for key, val in (("bits", args.bits), ("granularity", args.granularity), ("group_size", args.group_size),
                     ("axis", args.axis), ("symmetric", args.symmetric), ("target_sqnr", args.target_sqnr),
                     ("candidates", args.candidates)):
        if val is not None:
            options[key] = val
    budget = args.budget_bits if args.budget_bits is not None else cfg.get("budget_bits")
    if budget is not None and options.get("target_sqnr") is not None:
        raise UsageError("--budget-bits and --target-sqnr exclude each other: a mixed plan meets a size budget or an "
                         "error target, not both")
    return scheme, options, budget


def _weight_defaults(scheme: str, options: dict) -> dict:
    """The scheme's own defaults for weights where the user left options unset (``role_defaults["weight"]``:
    ``linear`` per output channel, symmetric; docs/usage.md "Defaults"); the tensors are in the torch layout,
    output channels on axis 0.  An unknown scheme is left for :func:`_check_scheme_options` to report."""
    from ..api import scheme_class
    from ..quantization.defaults import role_options

    try:
        cls = scheme_class(scheme)
    except (KeyError, TypeError):
        return options
    return role_options(cls, "weight", options, channel_axis=0)


def _check_scheme_options(scheme: str, options: dict, budget) -> Any:
    """Build the quantizer now: an unknown scheme, an option it does not take, a flag that does not apply."""
    from ..api import get_quantizer

    g = options.get("granularity")
    if "group_size" in options and g != "group":
        raise UsageError(f"--group-size applies only with --granularity group (granularity is {g or 'not set'})")
    if "axis" in options and g == "tensor":
        raise UsageError("--axis applies to --granularity channel or group, not tensor")
    try:
        probe = get_quantizer(scheme)
    except KeyError as exc:
        raise UsageError(str(exc.args[0]) if exc.args else str(exc)) from None
    except (TypeError, ValueError):
        probe = None  # a scheme that needs options: the full build below says which
    if probe is not None and not _is_planner(probe):
        used = [flag for key, flag in _PLANNER_FLAGS if (budget if key == "budget_bits" else options.get(key)) is not None]
        if used:
            verb = "applies" if len(used) == 1 else "apply"
            raise UsageError(f"{', '.join(used)} {verb} only to a planning scheme (--scheme mixed); "
                             f"scheme {scheme!r} quantizes every tensor at fixed bits")
    if isinstance(options.get("candidates"), str):
        options["candidates"] = _parse_candidates(options["candidates"])
    try:
        q = get_quantizer(scheme, **options)
    except KeyError as exc:
        raise UsageError(str(exc.args[0]) if exc.args else str(exc)) from None
    except (TypeError, ValueError) as exc:
        raise UsageError(f"scheme {scheme!r}: {exc}") from None
    return q


def cmd_quantize(args) -> int:
    from ..model import load_tensors, quantize_model
    from ..model.formats import get_format
    from ..model.quantize import plan_tensors

    # 1. the input: exists, is not quantized already
    check_exists(args.input, "input")
    kind = quantized_kind(args.input)
    if kind:
        raise UsageError(f"{args.input!r} is already quantized ({kind}); quantize the float model it came from "
                         f"(qcore dequantize writes a float copy, but quantizing that again compounds the error)")
    if args.config:
        check_exists(args.config, "--config file")
    if args.calibration_alias:
        if args.hessians:
            raise UsageError("--calibration is the deprecated spelling of --hessians; give one of them")
        print("qcore quantize: --calibration is deprecated; use --hessians", file=sys.stderr)
        args.hessians = args.calibration_alias
    if args.method == "gptq" and not args.hessians:
        raise UsageError("--method gptq needs --hessians HESSIANS.safetensors (per-layer Hessians written by "
                         "qtorch.collect_hessians, see docs/ptq.md)")
    for h in args.hessians or []:
        check_exists(h, "--hessians file")
    cfg: dict[str, Any] = load_config(args.config) if args.config else {}
    # 2. the output: right kind of name, not an input, in a folder we can write
    inputs = input_files(args.input) + ([args.config] if args.config else []) + (
        list(args.hessians or []))
    fmt = get_format(args.format)
    save_options = {"source": args.input} if fmt.uses_source else {}
    if args.max_shard_size is not None:
        save_options["max_shard_size"] = args.max_shard_size
    if fmt.output == "file" and args.max_shard_size is None:
        check_output_file(args.output, inputs, fmt.suffixes, f"a {fmt.name} model", force=args.force)
    else:
        check_output_folder(args.output, inputs, f"a {fmt.name} model" + (" in shards" if args.max_shard_size else ""),
                            force=args.force)
    try:
        fmt.check_save_options(save_options)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--format {fmt.name}: {exc}") from None
    if args.workers is not None and args.scheduler is not None:
        raise UsageError("give --workers N (a local Dask cluster) or --scheduler ADDRESS (an existing one), not both")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.workers is not None or args.scheduler is not None:
        try:
            import distributed  # noqa: F401
        except ImportError:
            from ..model.execution import DASK_MISSING

            raise UsageError(DASK_MISSING) from None
    # 3. scheme and options
    scheme, options, budget = _options_from(args, cfg)
    options = fmt.default_options(scheme, options)
    options = _weight_defaults(scheme, options)
    q = _check_scheme_options(scheme, options, budget)
    if _is_planner(q) and budget is None and options.get("target_sqnr") is None:
        budget = 4.5
    # 4. names: every pattern, rule and per-tensor key must match a tensor (headers only)
    tensors = load_tensors(args.input)
    names = list(tensors)
    include = args.include if args.include else cfg.get("include")
    exclude = args.exclude if args.exclude else cfg.get("exclude")
    for flag, pats in (("--include", include), ("--exclude", exclude)):
        check_patterns_match(f"{flag} pattern" + ("s" if pats and len(pats) > 1 else ""), [pats] if isinstance(pats, str) else pats, names)
    rules = cfg.get("rules")
    if rules:
        check_patterns_match("rule" + ("s" if len(rules) > 1 else ""), list(rules), names)
    for key in ("sensitivity", "calibration"):
        if isinstance(options.get(key), dict):
            check_patterns_match(f"{key} key" + ("s" if len(options[key]) > 1 else ""), list(options[key]), names)
    plan = plan_tensors(tensors, scheme, include, exclude, rules, options)
    if not any(s is not None for _, s, _ in plan):
        raise UsageError(f"no tensor of {args.input!r} would be quantized (only float tensors of 2+ dimensions are, "
                         f"unless a rule names them); check --include/--exclude and the rules")
    try:
        fmt.check_plan([(n, s, o) for n, s, o in plan], save_options)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    # 5. the work: each tensor written as soon as it is quantized (on Dask workers with --workers/--scheduler)
    t0 = time.perf_counter()
    ptq = {"method": args.method, "hessians": args.hessians if len(args.hessians) > 1 else args.hessians[0]} \
        if args.hessians else {}
    if ptq and args.method == "rtn" and not _is_planner(q):
        raise UsageError("--hessians is used by --method gptq or --scheme mixed")
    stream = {"output": args.output, "format": fmt.name, **save_options}
    try:
        with _executor(args) as executor, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            qm = quantize_model(tensors, scheme, include=include, exclude=exclude, rules=rules, budget_bits=budget,
                                progress=not args.quiet, executor=executor, **stream, **ptq, **options)
    except (ValueError, TypeError) as exc:
        if not ptq:
            raise
        raise UsageError(f"--hessians {' '.join(args.hessians)}: {exc}") from None
    t1 = time.perf_counter()
    size = qm.nbytes_written
    for w in caught:  # what the output lacks (e.g. a GGUF vocabulary): one line each
        print(f"qcore: warning: {w.message}", file=sys.stderr)
    rows = qm.report()
    if args.json:
        print(json.dumps({"output": args.output, "format": args.format, "file_size": size, "seconds": t1 - t0,
                          "tensors": _jsonable(rows)}, indent=2))
    elif not args.quiet:
        print(format_table(rows))
        print(f"wrote {args.output} ({_fmt_bytes(size)}) in {t1 - t0:.2f} s")
    return 0


def _executor(args):
    """The Dask executor of ``--workers``/``--scheduler`` (a context manager), or a null one."""
    import contextlib

    if args.workers is None and args.scheduler is None:
        return contextlib.nullcontext(None)
    from ..model.execution import dask_executor

    return dask_executor(workers=args.workers, scheduler=args.scheduler)


def cmd_inspect(args) -> int:
    from ..model.formats import inspect

    check_exists(args.file, "model")
    desc = inspect(args.file)
    title = f"{desc['path']}: {desc['title']}, {_fmt_bytes(desc['file_size'])}"
    if args.json:
        desc = dict(desc, tensors=_jsonable(desc["tensors"]))
        print(json.dumps(desc, indent=2))
        return 0
    print(title)
    plugins = sorted({f"{r['plugin'].get('distribution')} (scheme {r['scheme']})" for r in desc["tensors"]
                      if r["scheme"] and r.get("plugin")})
    if plugins:
        print("needs: " + ", ".join(plugins))
    print(format_table(desc["tensors"]))
    return 0


def cmd_dequantize(args) -> int:
    import numpy as np

    from ..model import load_quantized
    from ..model.safetensors_io import Entry, float32_to_bf16, write_safetensors
    from ..tensor import QTensor

    check_exists(args.file, "model")
    check_output_file(args.output, input_files(args.file), (".safetensors",), "a float model", force=args.force)
    qm = load_quantized(args.file)
    st = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}

    def convert(values: np.ndarray, dtype: str) -> np.ndarray:
        if dtype == "bfloat16":
            return float32_to_bf16(values)
        return np.ascontiguousarray(values, dtype=dtype)

    entries = []
    for name, t in qm.items():
        orig = qm.dtype_of(name)
        if isinstance(t, QTensor):
            want = args.dtype or (orig if orig in st else "float32")
            isz = 2 if want != "float32" else 4
            entries.append(Entry(name, st[want], t.shape, isz * t.size, lambda t=t, w=want: convert(t.dequantize(), w)))
        elif args.dtype and (t.dtype.kind == "f" or orig == "bfloat16") and orig != args.dtype:
            vals = qm.values(name)
            entries.append(Entry(name, st[args.dtype], vals.shape, (2 if args.dtype != "float32" else 4) * vals.size,
                                 lambda v=vals, w=args.dtype: convert(v, w)))
        elif orig == "bfloat16":
            e = Entry.of(name, np.ascontiguousarray(t))
            e.dtype = "BF16"
            entries.append(e)
        else:
            entries.append(Entry.of(name, np.ascontiguousarray(t)))
    # "format": "pt" is what transformers 4.x requires of safetensors metadata (5.x accepts it too)
    size = write_safetensors(args.output, entries, {"format": "pt", "dequantized_from": os.path.basename(os.path.normpath(args.file))})
    print(f"wrote {args.output}: {len(entries)} tensors, {_fmt_bytes(size)}")
    return 0


def cmd_report(args) -> int:
    from ..model import load_quantized, load_tensors

    check_exists(args.original, "float model")
    check_exists(args.quantized, "quantized model")
    if args.plot:
        check_output_file(args.plot, input_files(args.original) + input_files(args.quantized), (".png",), "the plot")
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
