"""A loop in place of aioimaplib's recursive response splitter, and two costs of its read path removed.

aioimaplib 2.0.3 handles each response line with one more level of recursion in
`IMAP4ClientProtocol._handle_responses`, and copies the rest of the buffer for every line. A
socket read holding more than ~1,000 short lines (a FLAGS listing of a large folder, `CHANGEDSINCE`
after a "mark all read") raises RecursionError and drops the connection; a retry reads the same
answer and fails again. This version walks the buffer with an offset and keeps the library's
semantics line for line.

Two more per-read costs of aioimaplib 2.0.3, both quadratic or close to it on a page of bodies:
`data_received` formats every socket read into a debug string (`'%s' % data`, the repr of up to
256 KB) even when debug logging is off: a sixth of the worker's CPU during an initial sync. And
`FetchCommand.wait_data`, asked after every response line, rescans every line of the command so
far and joins the current message's lines to count parentheses. Here the first formats only when
debug is enabled, and the second keeps a running count; both answer exactly as before.
`install()` is idempotent and runs when providers.imap.client is imported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aioimaplib import aioimaplib as _lib

_CRLF = _lib.CRLF
_FETCH_LINE = _lib.FetchCommand.FETCH_MESSAGE_DATA_RE


def _data_received(self: _lib.IMAP4ClientProtocol, d: bytes) -> None:
    if _lib.log.isEnabledFor(logging.DEBUG):
        _lib.log.debug("Received : %s", d)
    try:
        self._handle_responses(self.incomplete_line + d, self._handle_line, self.current_command)
        self.incomplete_line = b""
        self.current_command = None
    except _lib.IncompleteRead as incomplete_read:
        self.current_command = incomplete_read.cmd
        self.incomplete_line = incomplete_read.data


def _fetch_wait_data(self: _lib.FetchCommand) -> bool:
    """Whether the parentheses of the last `n FETCH (` response so far are unbalanced.

    aioimaplib: count '(' and ')' over the bytes lines from the last line that starts a FETCH
    response (from the first line if none does); literals (bytearrays) do not count. Lines are
    only ever appended, so the count carries over from the lines already seen.
    """
    lines = self._resp_lines
    seen, balance = self.__dict__.get("_wd_state", (0, 0))
    for i in range(seen, len(lines)):
        line = lines[i]
        if isinstance(line, bytes):
            if _FETCH_LINE.match(line):
                balance = 0
            balance += line.count(b"(") - line.count(b")")
    self._wd_state = (len(lines), balance)
    return balance != 0


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
            if current_cmd.wait_literal_data() or not data:
                # the literal ended with the read: the rest of its line comes next, for this command
                raise _lib.IncompleteRead(current_cmd)
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


def _set_timer(self: _lib.Command) -> None:
    if self._timeout is not None:
        self._deadline = self._loop.time() + self._timeout
        self._timer = self._loop.call_at(self._deadline, self._check_deadline)


def _check_deadline(self: _lib.Command) -> None:
    if self._loop.time() < self._deadline:  # data came in since: wait for the moved deadline
        self._timer = self._loop.call_at(self._deadline, self._check_deadline)
    else:
        self._timeout_callback()


def _reset_timer(self: _lib.Command) -> None:
    """aioimaplib cancels and schedules a timer for every response line and literal piece (about
    five per fetched message); here the pending timer stays and only its deadline moves."""
    if self._timeout is None:
        return
    if self._timer.cancelled():
        _set_timer(self)
    else:
        self._deadline = self._loop.time() + self._timeout


def install() -> None:
    _lib.IMAP4ClientProtocol._handle_responses = _handle_responses  # type: ignore[method-assign]
    _lib.IMAP4ClientProtocol.data_received = _data_received  # type: ignore[method-assign]
    _lib.FetchCommand.wait_data = _fetch_wait_data  # type: ignore[method-assign]
    _lib.Command._set_timer = _set_timer  # type: ignore[method-assign]
    _lib.Command._reset_timer = _reset_timer  # type: ignore[method-assign]
    _lib.Command._check_deadline = _check_deadline  # type: ignore[attr-defined]
