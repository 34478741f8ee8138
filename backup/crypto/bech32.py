"""BIP-173 bech32 encoding, as used by age for recipients and identities.

Design invariants:

- This is the original bech32 checksum (constant 1), not bech32m: age keys use it.
- There is no 90-character length limit: an X25519 identity is 74 characters, but
  post-quantum age keys run to thousands, and the limit exists only for Bitcoin's sake.
- Decoding is as strict as filippo.io/age/internal/bech32: mixed case, characters outside
  the charset, a bad checksum, or non-zero / over-long padding bits are errors. Both decode
  and encode preserve the case of the human-readable part, so callers can demand the exact
  case the format requires (``age`` recipients are lowercase, identities uppercase).
- Error messages never include the input string: it may be a secret key.
"""

from __future__ import annotations

__all__ = ["Bech32Error", "decode", "encode"]

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_REV = {c: i for i, c in enumerate(_CHARSET)}
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_CHECKSUM_LEN = 6


class Bech32Error(ValueError):
    """The string is not valid bech32 (the message says why, without quoting the input)."""


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GENERATOR[i]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: bytes | list[int], from_bits: int, to_bits: int, pad: bool) -> list[int]:
    acc = 0
    bits = 0
    out: list[int] = []
    maxv = (1 << to_bits) - 1
    for value in data:
        if value >> from_bits:
            raise Bech32Error("invalid data range")
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & maxv)
    elif bits >= from_bits:
        raise Bech32Error("illegal zero padding")
    elif (acc << (to_bits - bits)) & maxv:
        raise Bech32Error("non-zero padding")
    return out


def _check_hrp(hrp: str) -> None:
    if not hrp:
        raise Bech32Error("empty human-readable part")
    for pos, c in enumerate(hrp):
        if not 33 <= ord(c) <= 126:
            raise Bech32Error(f"invalid character in human-readable part at position {pos}")


def encode(hrp: str, data: bytes) -> str:
    """Encode ``data`` as bech32 under the human-readable part ``hrp``.

    Args:
        hrp: human-readable prefix, all lowercase or all uppercase; the output has its case.
        data: the payload bytes, any length.

    Returns:
        The bech32 string ``hrp + "1" + data + checksum``.

    Raises:
        Bech32Error: if ``hrp`` is empty, mixed-case or has characters outside 33..126.
    """
    _check_hrp(hrp)
    if hrp.lower() != hrp and hrp.upper() != hrp:
        raise Bech32Error("mixed-case human-readable part")
    lower = hrp.lower() == hrp
    hrp = hrp.lower()
    values = _convert_bits(data, 8, 5, pad=True)
    poly = _polymod([*_hrp_expand(hrp), *values, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(poly >> 5 * (5 - i)) & 31 for i in range(_CHECKSUM_LEN)]
    out = hrp + "1" + "".join(_CHARSET[v] for v in (*values, *checksum))
    return out if lower else out.upper()


def decode(s: str) -> tuple[str, bytes]:
    """Decode a bech32 string.

    Args:
        s: the string; all lowercase or all uppercase.

    Returns:
        ``(hrp, data)``: the human-readable part in the case it had in ``s``, and the payload.

    Raises:
        Bech32Error: on mixed case, a misplaced separator, characters outside the charset,
            a bad checksum or invalid padding.
    """
    if s.lower() != s and s.upper() != s:
        raise Bech32Error("mixed case")
    pos = s.rfind("1")
    if pos < 1 or pos + 1 + _CHECKSUM_LEN > len(s):
        raise Bech32Error("separator '1' at invalid position")
    hrp = s[:pos]
    _check_hrp(hrp)
    values: list[int] = []
    for i, c in enumerate(s[pos + 1 :].lower()):
        v = _CHARSET_REV.get(c)
        if v is None:
            raise Bech32Error(f"invalid character at position {pos + 1 + i}")
        values.append(v)
    if _polymod([*_hrp_expand(hrp.lower()), *values]) != 1:
        raise Bech32Error("invalid checksum")
    return hrp, bytes(_convert_bits(values[:-_CHECKSUM_LEN], 5, 8, pad=False))
