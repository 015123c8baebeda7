"""TcpConnection: back-pressure and unfinished messages, through a stand-in transport."""

from __future__ import annotations

import asyncio

from presenced.transport.tcp import MAX_UNSENT, PASS_INTAKE, TcpConnection, TcpRegistry


class FakeTransport(asyncio.Transport):
    """Keeps what is written (a peer that reads nothing) and the reading state."""

    def __init__(self) -> None:
        super().__init__()
        self.buffered = 0
        self.reading = True
        self.aborted = False

    def get_extra_info(self, name, default=None):
        return {"peername": ("192.0.2.7", 5070), "sockname": ("127.0.0.1", 5060)}.get(name, default)

    def write(self, data) -> None:
        self.buffered += len(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.aborted

    def is_reading(self) -> bool:
        return self.reading

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.aborted = True


def _connection(messages: list) -> tuple[TcpConnection, FakeTransport, TcpRegistry]:
    reg = TcpRegistry(lambda data, source, local: messages.append(data))
    conn = TcpConnection(reg, reg.on_message)
    t = FakeTransport()
    conn.connection_made(t)
    return conn, t, reg


OPTIONS = (b"OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.7:5070;branch=z9hG4bK1\r\n"
           b"Call-ID: x\r\nCSeq: 1 OPTIONS\r\nFrom: <sip:b@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\n"
           b"Content-Length: 0\r\n\r\n")


async def test_a_peer_whose_answers_back_up_is_not_read_until_they_drain():
    conn, t, _ = _connection([])
    conn.pause_writing()  # what asyncio calls at the high-water mark
    assert not t.reading
    await asyncio.sleep(0)  # the end of a loop pass does not undo it
    assert not t.reading
    conn.resume_writing()
    assert t.reading


async def test_one_pass_takes_at_most_pass_intake_bytes_from_a_connection():
    got: list = []
    conn, t, _ = _connection(got)
    n = PASS_INTAKE // len(OPTIONS) + 1
    conn.data_received(OPTIONS * n)
    assert not t.reading and len(got) == n  # what was read is handled
    await asyncio.sleep(0)  # next pass: reading again
    assert t.reading


async def test_a_connection_with_a_mebibyte_unread_is_dropped():
    conn, t, reg = _connection([])
    assert conn.write(b"x" * (MAX_UNSENT // 2))
    assert not t.aborted
    conn.write(b"x" * (MAX_UNSENT // 2 + 1))
    assert t.aborted and reg.stalled == 1
    assert not conn.write(b"more")


async def test_a_message_trickled_in_for_longer_than_a_minute_is_dropped():
    from presenced.transport.tcp import PARTIAL_MESSAGE_TIMEOUT

    conn, t, reg = _connection([])
    conn.data_received(OPTIONS[:40])  # a request begins ...
    conn.data_received(OPTIONS[40:41])  # ... and one more byte: the idle timer is reset
    assert reg.sweep_idle() == 0 and not t.aborted
    conn.partial_since -= PARTIAL_MESSAGE_TIMEOUT + 1
    assert reg.sweep_idle() == 1 and t.aborted


async def test_messages_that_complete_keep_the_connection():
    from presenced.transport.tcp import PARTIAL_MESSAGE_TIMEOUT

    got: list = []
    conn, t, reg = _connection(got)
    conn.data_received(OPTIONS[:40])
    conn.partial_since -= PARTIAL_MESSAGE_TIMEOUT - 5
    conn.data_received(OPTIONS[40:] + OPTIONS[:10])  # done, and the next one starts now
    assert len(got) == 1
    assert reg.sweep_idle() == 0 and not t.aborted
