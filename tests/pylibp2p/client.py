"""An independent libp2p client (py-libp2p 0.8, trio) for tests/tests/py_libp2p.rs.

    python client.py MULTIADDR/p2p/ID [--identify] [--pings N] [--wait-stdin] [--qlog FILE]

Connects to the node (QUIC v1 or TCP, from the address), optionally runs identify (a stream
this client opens, `/ipfs/id/1.0.0`), pings N times on one `/ipfs/ping/1.0.0` stream, then
with `--wait-stdin` says `ready` and stays connected until its stdin closes (so the caller can
check the node's own streams to us), and prints one JSON object per step on stdout:

    {"step": "connect", "ok": true, "peer": "12D3...", "self": "12D3...", "secs": 0.25}
    {"step": "identify", "ok": true, "agent": "kos-node/0.1.0", "protocols": [...]}
    {"step": "ping", "ok": true, "rtts_ms": [1, 0, 0]}
    {"step": "ready"}
    {"step": "done"}

A failed step prints `"ok": false` with `"error"` and ends the run with exit code 1. The whole
run is bounded by `--timeout` (30 s). `--qlog FILE` writes aioquic's qlog of the QUIC
connection (decrypted frames: STREAM, STOP_SENDING, RESET_STREAM...) to FILE at exit.
"""

import argparse
import json
import sys
import time

import multiaddr
import trio
from libp2p import new_host
from libp2p.custom_types import TProtocol
from libp2p.host.ping import perform_ping_roundtrip
from libp2p.identity.identify.pb.identify_pb2 import Identify
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.utils.varint import read_length_prefixed_protobuf

IDENTIFY = TProtocol("/ipfs/id/1.0.0")
PING = TProtocol("/ipfs/ping/1.0.0")


def emit(**fields):
    print(json.dumps(fields), flush=True)


def error_text(e: BaseException) -> str:
    # trio wraps task failures in exception groups; name the innermost causes.
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(error_text(x) for x in e.exceptions)
    cause = e.__cause__
    text = f"{type(e).__name__}: {e}"
    return f"{text} (caused by {error_text(cause)})" if cause else text


async def run(args) -> bool:
    addr = multiaddr.Multiaddr(args.addr)
    host = new_host(enable_quic="/quic" in args.addr)
    async with host.run(listen_addrs=[]):
        info = info_from_p2p_addr(addr)
        t0 = time.monotonic()
        try:
            await host.connect(info)
        except Exception as e:  # noqa: BLE001 - reported, not handled
            emit(step="connect", ok=False, error=error_text(e))
            return False
        emit(
            step="connect",
            ok=True,
            peer=str(info.peer_id),
            self=str(host.get_id()),
            secs=time.monotonic() - t0,
        )

        if args.identify:
            try:
                stream = await host.new_stream(info.peer_id, [IDENTIFY])
                data = await read_length_prefixed_protobuf(stream, use_varint_format=True)
                msg = Identify()
                msg.ParseFromString(data)
                emit(
                    step="identify",
                    ok=True,
                    agent=msg.agent_version,
                    protocols=list(msg.protocols),
                )
            except Exception as e:  # noqa: BLE001
                emit(step="identify", ok=False, error=error_text(e))
                return False

        if args.pings:
            try:
                stream = await host.new_stream(info.peer_id, [PING])
                rtts = [await perform_ping_roundtrip(stream) for _ in range(args.pings)]
                emit(step="ping", ok=True, rtts_ms=rtts)
            except Exception as e:  # noqa: BLE001
                emit(step="ping", ok=False, error=error_text(e))
                return False

        if args.wait_stdin:
            emit(step="ready")
            await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        emit(step="done")
        return True


def record_qlog(path: str) -> None:
    """Attaches one aioquic QuicLogger to every QUIC connection; writes it at exit."""
    import atexit

    from aioquic.quic import connection as quic_connection
    from aioquic.quic.logger import QuicLogger

    qlog = QuicLogger()
    original = quic_connection.QuicConnection.__init__

    def init(self, *a, **kw):
        configuration = kw.get("configuration") or a[0]
        configuration.quic_logger = qlog
        original(self, *a, **kw)

    quic_connection.QuicConnection.__init__ = init

    def write():
        with open(path, "w") as f:
            json.dump(qlog.to_dict(), f)

    atexit.register(write)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("addr")
    p.add_argument("--identify", action="store_true")
    p.add_argument("--pings", type=int, default=0)
    p.add_argument("--wait-stdin", action="store_true")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--qlog")
    args = p.parse_args()
    if args.qlog:
        record_qlog(args.qlog)

    async def bounded():
        with trio.move_on_after(args.timeout):
            return await run(args)
        emit(step="timeout", ok=False, error=f"not done within {args.timeout}s")
        return False

    try:
        ok = trio.run(bounded)
    except BaseException as e:  # noqa: BLE001 - the host's own tasks may fail on exit
        emit(step="exit", ok=False, error=error_text(e))
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
