"""What a model receives for a file argument: DEEPaaS's `UploadedFile` shape.

DEEP modules read `arg.filename` (a path on local disk), `arg.original_filename`,
`arg.content_type` and `arg.name`; a namedtuple keeps them picklable for the worker
processes and lets modules unpack it the way they already do.
"""

from __future__ import annotations

from collections import namedtuple

UploadedFile = namedtuple(
    "UploadedFile", ("name", "filename", "content_type", "original_filename"), defaults=(None,) * 4
)
UploadedFile.__doc__ = (
    "An uploaded file: argument name, path of the temporary copy, content type, client file name."
)
