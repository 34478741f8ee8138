"""Encryption for archives: the age v1 format, implemented on ``cryptography``.

Archives are age files so that ``age -d -i key.txt`` decrypts them without this project;
see :mod:`backup.crypto.age` for the format's invariants.
"""

from . import age
from .age import *  # noqa: F403  (the package is the format module's public face)

__all__ = list(age.__all__)
