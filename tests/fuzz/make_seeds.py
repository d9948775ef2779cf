#!/usr/bin/env python3
"""Writes the seed corpora in corpus/<target>/ (tests/fuzz/README.md): a few well-formed and
a few wrong inputs per target, so that fuzzing starts from the protocol rather than from
nothing. Run it again after changing a target's input format."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- store protocol frames (src/bootstrap/store_proto.h) --------------------------------
SET, GET, ADD, DEL = 1, 2, 3, 4
OK, NOT_FOUND, ERROR, REJECT = 0, 1, 2, 3


def req(op, key, val=b"", arg=0, pad=b"\0\0\0"):
    return bytes([op]) + pad + struct.pack(">III", len(key), len(val), arg) + key + val


def resp(status, payload=b"", pad=b"\0\0\0"):
    return bytes([status]) + pad + struct.pack(">I", len(payload)) + payload


# --- fuzz_store_server: chunks of (ctl, len, bytes); ctl&3 connection, &4 clock, &8 send --
def chunks(*parts):
    out = b""
    for ctl, data in parts:
        for i in range(0, max(len(data), 1), 255):
            piece = data[i:i + 255]
            out += bytes([ctl, len(piece)]) + piece
    return out


write("store_server", "set_get", chunks((8, req(SET, b"k", b"v")), (8, req(GET, b"k", arg=0))))
write("store_server", "get_woken_by_set",
      chunks((9, req(GET, b"late", arg=1000)), (8, req(SET, b"late", b"here"))))
write("store_server", "get_woken_by_add",
      chunks((9, req(GET, b"n", arg=1000)), (8, req(ADD, b"n", struct.pack(">q", 5)))))
write("store_server", "get_times_out",
      chunks((9, req(GET, b"never", arg=300)), (12, b""), (12, b""), (9, req(DEL, b"x"))))
write("store_server", "add_del",
      chunks((8, req(ADD, b"c", struct.pack(">q", -2)) + req(DEL, b"c") + req(GET, b"c"))))
write("store_server", "add_not_integer",
      chunks((8, req(SET, b"s", b"abc") + req(ADD, b"s", struct.pack(">q", 1)))))
write("store_server", "pipelined_split",
      chunks((0, req(SET, b"a", b"1")[:7]), (8, req(SET, b"a", b"1")[7:] + req(GET, b"a"))))
write("store_server", "reserved_bytes", chunks((8, req(GET, b"k", pad=b"\1\0\0"))))
write("store_server", "oversized", chunks((8, req(SET, b"k")[:4] + struct.pack(">III", 5000, 0, 0))))
write("store_server", "stranger_wrong_mac", chunks((10, b"\x55" * 32 + req(SET, b"k", b"v"))))
write("store_server", "stranger_silent", chunks(*[(14, b"")] * 24))

# --- fuzz_store_client: everything the server says ------------------------------------
GREET = b"PARSTOR1" + bytes(range(32))
write("store_client", "all_ok",
      GREET + resp(OK) + resp(OK, b"value") + resp(OK) + resp(OK, struct.pack(">q", 3)) +
      resp(OK) + resp(NOT_FOUND))
write("store_client", "long_value", GREET + resp(OK) + resp(OK, b"x" * 100) + resp(OK))
write("store_client", "refused", b"PARSTOR0" + bytes(32) + resp(ERROR, b"store: out of memory"))
write("store_client", "rejected", GREET + resp(REJECT, b"store: wrong job token (PAR_TOKEN)"))
write("store_client", "error_answer", GREET + resp(OK) + resp(ERROR, b"store: no") + resp(OK))
write("store_client", "reserved_bytes", GREET + resp(OK) + resp(OK, b"v", pad=b"\0\1\0"))
write("store_client", "not_a_store", b"HTTP/1.1 400 Bad Request\r\n\r\n")
write("store_client", "add_short", GREET + resp(OK) + resp(OK, b"v") + resp(OK) + resp(OK, b"1"))

# --- fuzz_records: capacity byte, then the record ------------------------------------
write("records", "job_id", b"\x20exp1-0a1b2c3d")
write("records", "host_id", b"\xa0node1/6f1c2a40-1b2c-4d5e-8f90-123456789abc")
write("records", "slash", b"\x20a/b")

# --- fuzz_whoami: values for RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE MASTER_ADDR
# MASTER_PORT PAR_STORE_ADDR PAR_TOKEN OMPI_COMM_WORLD_RANK OMPI_COMM_WORLD_SIZE PMI_RANK
# PMI_SIZE SLURM_PROCID SLURM_NTASKS SLURM_LOCALID SLURM_TASKS_PER_NODE SLURM_NODEID
# PAR_ALLOW_NO_TOKEN ...; "\x01" leaves one unset.
U = "\x01"
def env(*vals):
    return "\n".join(vals).encode()
write("whoami", "parrun", env("1", "4", "1", "4", "127.0.0.1", "29500", "127.0.0.1:29500", "tok"))
write("whoami", "torchrun", env("0", "2", U, U, "0.0.0.0", "29500", U, U, U, U, U, U, U, U, U, U, U, "1"))
write("whoami", "openmpi", env(U, U, U, U, "[::1]", "1", U, U, "3", "8", U, U, U, U, U, U, U, U, "3", "4"))
write("whoami", "slurm", env(U, U, U, U, "h", "2", "h:2", U, U, U, U, U, "5", "11", "1", "4(x2),3", "2"))
write("whoami", "v6_store", env("0", "3", U, U, U, U, "[fe80::1]:65535"))
