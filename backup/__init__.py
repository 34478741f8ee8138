"""backup: encrypted, compressed archives for cold storage that restore with standard tools.

Every archive is one stream, ``tar (pax) -> zstd -> age v1``, so
``age -d -i key.txt ARCHIVE | zstd -d | tar -x`` reads it without this project.
Data flows one way: policy -> scan -> pack -> target -> inventory; restore runs it back.
"""

__version__ = "0.1.0"
