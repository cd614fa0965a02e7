"""Build of qcore: the core package, the built-in plugins (``qcore_plugins``) and their Cython kernels.

Every ``pyx/NAME.pyx`` becomes the extension module ``qcore_plugins._NAME``.  C helpers included by the
``.pyx`` files live beside them in ``pyx/``; an extension may add C files of its own (``C_SOURCES``), each a
translation unit compiled side by side with the others.  OpenMP is used where the compiler accepts ``-fopenmp``; the
build still succeeds, serially, where it does not.  We never tune for the build machine (no native -march flag): instruction sets beyond
baseline x86-64 are chosen at run time inside the C helpers (``__attribute__((target(...)))`` + cpuid).
"""
import glob
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext


def _compiler_accepts(compiler, flags):
    """True if ``compiler`` compiles and links a tiny OpenMP program with ``flags``."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n")
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=flags)
            compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=flags)
        except Exception:
            return False
    return True


def _compile_side_by_side(compiler, jobs):
    """Make ``compiler`` compile the sources of one extension in ``jobs`` threads (distutils compiles them one
    after the other): the low-bit GEMM's SIMD paths, its slowest part, then build in parallel."""

    def compile(sources, output_dir=None, macros=None, include_dirs=None, debug=0, extra_preargs=None,
                extra_postargs=None, depends=None):
        macros, objects, extra_postargs, pp_opts, build = compiler._setup_compile(
            output_dir, macros, include_dirs, sources, depends, extra_postargs)
        cc_args = compiler._get_cc_args(pp_opts, debug, extra_preargs)
        todo = [obj for obj in objects if obj in build]
        with ThreadPoolExecutor(max(1, min(jobs, len(todo)))) as pool:
            for _ in pool.map(lambda obj: compiler._compile(obj, *build[obj], cc_args, extra_postargs, pp_opts), todo):
                pass
        return objects

    compiler.compile = compile


class BuildExt(build_ext):
    """Adds OpenMP flags per compiler, when the compiler has OpenMP; compiles the extensions side by side."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:  # one compiler per core unless `build_ext -j N` says otherwise
            self.parallel = os.cpu_count() or 1

    def build_extensions(self):
        ctype = self.compiler.compiler_type
        if os.environ.get("QCORE_NO_OPENMP"):
            omp = []
        elif ctype == "msvc":
            omp = ["/openmp"]
        elif _compiler_accepts(self.compiler, ["-fopenmp"]):
            omp = ["-fopenmp"]
        else:
            omp = []
        if not omp:
            sys.stderr.write("qcore: building without OpenMP; kernels will run on one thread\n")
        if ctype != "msvc":
            _compile_side_by_side(self.compiler, self.parallel or 1)
        # the extensions with the most translation units first: they are the longest to build
        self.extensions.sort(key=lambda e: -len(e.sources))
        extra = os.environ.get("QCORE_EXTRA_CFLAGS", "").split()
        for ext in self.extensions:
            if ctype != "msvc":
                # -ffp-contract=off: kernels must equal the numpy reference bit for bit (no fused x*s+c).
                ext.extra_compile_args = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"] + omp + extra
                ext.extra_link_args = omp + extra
            else:
                ext.extra_compile_args = ["/O2"] + omp
        super().build_extensions()


#: C files an extension compiles besides its .pyx (each its own translation unit)
C_SOURCES = {
    # the portable part and driver, and one file per SIMD path with its 32 tile functions (pyx/lowbit_tile.h)
    "lowbit": ["pyx/lowbit_kernels.c", "pyx/lowbit_avx2.c", "pyx/lowbit_vnni.c"],
}


def extensions():
    import numpy

    exts = []
    for path in sorted(glob.glob(os.path.join("pyx", "*.pyx"))):
        name = os.path.splitext(os.path.basename(path))[0]
        exts.append(
            Extension(
                f"qcore_plugins._{name}",
                [path] + C_SOURCES.get(name, []),
                include_dirs=[numpy.get_include(), "pyx"],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                depends=glob.glob(os.path.join("pyx", "*.h")) + glob.glob(os.path.join("pyx", "*.pxd")),
            )
        )
    from Cython.Build import cythonize

    return cythonize(
        exts,
        nthreads=os.cpu_count() or 1,  # .pyx -> .c in parallel too (a no-op when the C files are up to date)
        build_dir=os.path.join("build", "cython"),  # generated C stays out of pyx/, which holds only sources
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "initializedcheck": False,
            "cdivision": True,
        },
    )


# Built-in plugins register through the same entry-point group a third party uses.
BUILTIN_PLUGINS = [
    "linear = qcore_plugins.schemes.linear",
    "mixed = qcore_plugins.schemes.mixed",
    "log = qcore_plugins.schemes.log",
    "kmeans = qcore_plugins.schemes.kmeans",
    "minmax = qcore_plugins.observers.minmax",
    "moving_average = qcore_plugins.observers.moving_average",
    "percentile = qcore_plugins.observers.percentile",
    "histogram = qcore_plugins.observers.histogram",
    "mse = qcore_plugins.observers.mse",
    "numpy = qcore_plugins.kernels.numpy_kernel",
    "cython = qcore_plugins.kernels.cython_kernel",
]

setup(
    name="qcore",
    version="0.1.0",
    description="Neural-network quantization: linear, log and k-means schemes on Cython/OpenMP kernels, with plugins",
    long_description=open("README.md", encoding="utf-8").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["qcore", "qcore.*"])
    + ["qcore_plugins"]
    + [f"qcore_plugins.{p}" for p in find_packages("plugins")],
    package_dir={"qcore_plugins": "plugins"},
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExt},
    install_requires=[
        "numpy>=1.25",
        "pluggy>=1.3",
        "safetensors>=0.4",
        "scikit-learn>=1.3",
        "scipy>=1.9",  # LAPACK potrf/trtri and BLAS syrk for GPTQ (scikit-learn needs it anyway)
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "threadpoolctl>=3.1",
    ],
    extras_require={
        "torch": ["torch==2.13.0"],
        # quantize_model(executor=...) and `qcore quantize --workers/--scheduler` on a Dask cluster
        "dask": ["dask[distributed]>=2023.1"],
        "test": ["pytest>=7", "hypothesis>=6"],
    },
    entry_points={
        "qcore": BUILTIN_PLUGINS,
        "console_scripts": ["qcore = qcore.cli.main:main"],
        # qcore.testing's fixtures (qcore_plugins, register_qcore_plugin); `pytest -p no:qcore` turns them off
        "pytest11": ["qcore = qcore.testing.pytest_plugin"],
    },
)
