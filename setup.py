"""Build the optional C parts (backup/archive/_fastwalk.c, the scan's walk, and
backup/archive/_speedups.c, tar headers); everything else is in pyproject.toml.
`optional=True`: where they cannot be compiled, the install goes on and the Python code they
stand in for, which gives the same result more slowly, is used."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "backup.archive._fastwalk",
            ["backup/archive/_fastwalk.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        ),
        Extension(
            "backup.archive._speedups",
            ["backup/archive/_speedups.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        ),
    ]
)
