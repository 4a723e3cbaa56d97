"""Give a JPEG an EXIF orientation tag without re-encoding it (plain Python: the mmpose-ref venv imports
this too, so that mmpose's references and the tests read byte-identical files)."""

from __future__ import annotations

import struct


def with_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The same JPEG with an APP1 EXIF segment holding only the orientation tag (0x0112), right after SOI."""
    assert jpeg[:2] == b"\xff\xd8", "not a JPEG"
    tiff = (b"MM\x00\x2a" + struct.pack(">I", 8)  # big-endian TIFF header, IFD at offset 8
            + struct.pack(">H", 1)  # one entry
            + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)  # Orientation, SHORT, count 1, value
            + struct.pack(">I", 0))  # no next IFD
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]
