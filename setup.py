"""Build the C parts (backup/archive/_fastwalk.c, the scan's walk, and
backup/archive/_speedups.c, tar headers); everything else is in pyproject.toml.

Every install builds them: an install that silently fell back to the pure-Python code would be
a different, slower program than the one docs/performance.md measures. Without a C compiler
the install stops with one line saying what to do. ``BACKUP_PURE_PYTHON=1`` installs without
them on purpose: the Python code they stand in for gives the same results, more slowly."""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, PlatformError

PURE_PYTHON = os.environ.get("BACKUP_PURE_PYTHON", "") not in ("", "0")

NO_COMPILER = (
    "backup: cannot build its C parts: the C compiler ({cc}) failed or is missing; install one "
    "and the Python headers (Debian: apt-get install build-essential python3-dev), or set "
    "BACKUP_PURE_PYTHON=1 to install the slower pure-Python fallback"
)


class BuildExt(build_ext):
    """Stop with one clear line instead of a compiler's traceback (the compiler's own
    messages, printed above it, say what it lacked)."""

    def run(self) -> None:
        try:
            super().run()
        except (CCompilerError, CompileError, ExecError, PlatformError):
            command = getattr(self.compiler, "compiler_so", None) or ["cc"]
            raise SystemExit(NO_COMPILER.format(cc=command[0])) from None


FLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"]

setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=[]
    if PURE_PYTHON
    else [
        Extension(
            "backup.archive._fastwalk", ["backup/archive/_fastwalk.c"], extra_compile_args=FLAGS
        ),
        Extension(
            "backup.archive._speedups", ["backup/archive/_speedups.c"], extra_compile_args=FLAGS
        ),
    ],
)
