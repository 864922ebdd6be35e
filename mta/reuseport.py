"""Steer each client address to one listener process of a SO_REUSEPORT group.

What it does: ``steer_by_client(sock, n)`` attaches a classic BPF program to the
reuseport group of the listening ``sock`` that picks socket ``source_address % n``
for each new connection (IPv4: the whole address; IPv6: its last 32 bits; the
version is read from each packet, so IPv4 clients of an IPv6 socket are steered
too). So every connection of one client lands in the same listener process, and that
process's per-client cap (``max_per_ip``) is the real per-client cap instead of 1/N of it.

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
_NET = -0x100000  # SKF_NET_OFF: loads relative to the network header
_LD_B, _LD_W, _RSH_K, _JEQ_K, _JA, _MOD_K, _RET_A = 0x30, 0x20, 0x74, 0x15, 0x05, 0x94, 0x16


def _program(n: int) -> bytes:
    """A = source address (IPv4: all of it; IPv6: its last 32 bits); return A % n.

    The IP version is read from the packet, not assumed from the socket: an IPv6
    socket also receives IPv4 connections (v4-mapped), whose header is IPv4's."""
    insns = [(_LD_B, 0, 0, _NET),            # 0: A = first byte of the IP header
             (_RSH_K, 0, 0, 4),              # 1: A = IP version
             (_JEQ_K, 0, 2, 4),              # 2: IPv4 -> 3, else -> 5
             (_LD_W, 0, 0, _NET + 12),       # 3: IPv4 source address
             (_JA, 0, 0, 1),                 # 4: -> 6
             (_LD_W, 0, 0, _NET + 8 + 12),   # 5: last word of the IPv6 source address
             (_MOD_K, 0, 0, n),              # 6
             (_RET_A, 0, 0, 0)]              # 7
    return b"".join(struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF)
                    for code, jt, jf, k in insns)


def steer_by_client(sock: socket.socket, n: int) -> bool:
    if sys.platform != "linux" or n < 2 or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    code = ctypes.create_string_buffer(_program(n))
    fprog = struct.pack("HL", len(code.raw) // 8, ctypes.addressof(code))  # struct sock_fprog
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError:
        return False
    return True
