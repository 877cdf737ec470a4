"""A loop in place of aioimaplib's recursive response splitter.

aioimaplib 2.0.3 handles each response line with one more level of recursion in
`IMAP4ClientProtocol._handle_responses`, and copies the rest of the buffer for every line. A
socket read holding more than ~1,000 short lines (a FLAGS listing of a large folder, `CHANGEDSINCE`
after a "mark all read") raises RecursionError and drops the connection; a retry reads the same
answer and fails again. This version walks the buffer with an offset and keeps the library's
semantics line for line. `install()` is idempotent and runs when providers.imap.client is imported.
"""

from __future__ import annotations

from collections.abc import Callable

from aioimaplib import aioimaplib as _lib

_CRLF = _lib.CRLF


def _handle_responses(
    self: _lib.IMAP4ClientProtocol,
    data: bytes,
    line_handler: Callable[[bytes, _lib.Command | None], _lib.Command | None],
    current_cmd: _lib.Command | None = None,
) -> None:
    pos = 0
    while True:
        if pos >= len(data):
            if self.pending_sync_command is not None:
                self.pending_sync_command.flush()
            if current_cmd is not None and current_cmd.wait_data():
                raise _lib.IncompleteRead(current_cmd)
            return
        if current_cmd is not None and current_cmd.wait_literal_data():
            data, pos = current_cmd.append_literal_data(data[pos:] if pos else data), 0
            if current_cmd.wait_literal_data():
                raise _lib.IncompleteRead(current_cmd)
            if not data:
                continue
        end = data.find(_CRLF, pos)
        if end < 0:
            raise _lib.IncompleteRead(current_cmd, data[pos:])  # type: ignore[arg-type]
        line = data[pos:end]
        pos = end + 2
        cmd = line_handler(line, current_cmd)
        begin_literal = _lib.literal_data_re.match(line)
        if begin_literal:
            if cmd is None:
                cmd = _lib.Command("NIL", "unused")
            cmd.begin_literal_data(int(begin_literal.group("size")))
            current_cmd = cmd
        elif cmd is not None and cmd.wait_data():
            current_cmd = cmd
        else:
            current_cmd = None


def install() -> None:
    _lib.IMAP4ClientProtocol._handle_responses = _handle_responses  # type: ignore[method-assign]
