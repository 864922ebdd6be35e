"""Steer each client address to one listener process of a SO_REUSEPORT group.

What it does: ``steer_by_client(sock, n)`` attaches a classic BPF program to the
reuseport group of the listening ``sock`` that picks socket ``source_address % n``
for each new connection (IPv4: the whole address; IPv6: its last 32 bits). So every
connection of one client lands in the same listener process, and that process's
per-client cap (``max_per_ip``) is the real per-client cap instead of 1/N of it.

Theory: the kernel runs the program on the connection's first packet; its result is
an index into the group, in the order the sockets joined (dense: when a socket
leaves, the last one takes its slot). While a listener is being restarted the group
has fewer than ``n`` sockets, and for an index past the end the kernel falls back to
its own hash: those clients are spread as without the program, until the restart.

How it fails: returns False (nothing attached) where the kernel or the platform has
no SO_ATTACH_REUSEPORT_CBPF (Linux < 4.5, not Linux); the caller then keeps the caps
split 1/N.

Public: ``steer_by_client(sock, n) -> bool``.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys

__all__ = ["steer_by_client"]

SO_ATTACH_REUSEPORT_CBPF = 51
_SKF_NET_OFF = -0x100000  # BPF loads relative to the network header
_LD_W_ABS, _ALU_MOD_K, _RET_A = 0x20, 0x94, 0x16  # BPF_LD|W|ABS, BPF_ALU|MOD|K, BPF_RET|A


def _program(family: int, n: int) -> bytes:
    src = 12 if family == socket.AF_INET else 8 + 12  # IPv4 saddr; last word of IPv6 saddr
    insns = [(_LD_W_ABS, 0, 0, (_SKF_NET_OFF + src) & 0xFFFFFFFF),
             (_ALU_MOD_K, 0, 0, n),
             (_RET_A, 0, 0, 0)]
    return b"".join(struct.pack("HBBI", *i) for i in insns)


def steer_by_client(sock: socket.socket, n: int) -> bool:
    if sys.platform != "linux" or n < 2 or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    code = ctypes.create_string_buffer(_program(sock.family, n))
    fprog = struct.pack("HL", len(code.raw) // 8, ctypes.addressof(code))  # struct sock_fprog
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError:
        return False
    return True
