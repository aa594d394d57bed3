"""Starts a program the way systemd socket activation does: listening TCP
sockets on 127.0.0.1:PORT and [::1]:PORT as file descriptors 3 and 4, with
LISTEN_FDS=2 and LISTEN_PID set to the program's own pid (it replaces this
process, so the pid is the same).

    python3 socket_activate.py PORT PROGRAM [ARGS...]
"""

import os
import socket
import sys

port = int(sys.argv[1])
v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
v4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
v4.bind(("127.0.0.1", port))
v4.listen(128)
v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
v6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
v6.bind(("::1", port))
v6.listen(128)
# Move them to 3 and 4 (dup first, so neither overwrites the other).
a, b = os.dup(v4.fileno()), os.dup(v6.fileno())
v4.close()
v6.close()
os.dup2(a, 3)
os.dup2(b, 4)
for fd in (a, b):
    if fd not in (3, 4):
        os.close(fd)
os.set_inheritable(3, True)
os.set_inheritable(4, True)
os.environ["LISTEN_FDS"] = "2"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execvp(sys.argv[2], sys.argv[2:])
