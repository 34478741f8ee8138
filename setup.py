"""Build the optional C walker (backup/archive/_fastwalk.c); everything else is in
pyproject.toml. `optional=True`: where it cannot be compiled, the install goes on and the
scan uses its Python walk, which gives the same result more slowly."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "backup.archive._fastwalk",
            ["backup/archive/_fastwalk.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
