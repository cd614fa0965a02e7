"""The README's examples run as written, and its commands exist."""
import pathlib
import re
import subprocess
import sys
import types

import numpy as np

import qcore
from qcore.plugin import manager as mgr

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_library_example_runs():
    ns = {}
    exec(compile(BLOCKS[0], "README.md", "exec"), ns)
    qt = ns["qt"]
    assert qt.bits == 4 and qt.params["scale"].shape == (1024, 32)
    assert qt.nbytes == 1024 * 4096 // 2 + 1024 * 32 * 4  # symmetric: float32 scales, no zero point
    # the searched full-range scale (docs/schemes.md) may clip a group's largest value by up to 1.5 steps
    assert np.abs(ns["w_hat"] - ns["w"]).max() <= 1.5 * np.abs(qt.params["scale"]).max() + 1e-6


def test_plugin_example_registers_and_quantizes():
    ns = {}
    exec(compile(BLOCKS[1], "README.md", "exec"), ns)
    plugin = types.SimpleNamespace(qcore_quantizers=ns["qcore_quantizers"])
    m = mgr.get_manager()
    name = m.register(plugin, name="readme-sign")
    try:
        x = np.array([1.0, -3.0, 2.0], np.float32)
        qt = qcore.quantize(x, "sign")
        np.testing.assert_allclose(qt.dequantize(), [2.0, -2.0, 2.0])
    finally:
        m.unregister(name)
    assert "sign" not in qcore.list_schemes()


def test_cli_commands_named_in_readme_run():
    fenced = re.findall(r"^```(\w*)\n(.*?)^```", README, re.S | re.M)
    shell = "\n".join(body for lang, body in fenced if lang in ("", "bash"))
    cmds = set(re.findall(r"^qcore (\w+)", shell, re.M)) | set(re.findall(r"&& qcore (\w+)", shell))
    assert {"demo", "plugins", "schemes"} <= cmds
    for cmd in sorted(cmds):
        out = subprocess.run([sys.executable, "-m", "qcore", cmd, "--help"], capture_output=True, text=True)
        assert out.returncode == 0, (cmd, out.stderr)
