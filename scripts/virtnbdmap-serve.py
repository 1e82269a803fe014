#!/usr/bin/python3
"""Serve a virtnbdbackup chain the way virtnbdmap (Debian's virtnbdbackup) does, minus the
kernel device: this machine's kernel has no nbd module, so instead of `qemu-nbd -c /dev/nbdX`
the incremental data is replayed through libnbd, and the export is read through nbdfuse.

virtnbdmap's own functions build the block map and start nbdkit with its plugin and filters;
the replay writes the same bytes to the same offsets as its replayChanges.

    scripts/virtnbdmap-serve.py PORT FULL.data[,INC.data,...]   prints nbdkit's pid
"""
import importlib.machinery
import importlib.util
import os
import sys
import tempfile
from argparse import Namespace

import nbd

loader = importlib.machinery.SourceFileLoader("virtnbdmap", "/usr/bin/virtnbdmap")
spec = importlib.util.spec_from_loader("virtnbdmap", loader)
vmap = importlib.util.module_from_spec(spec)
loader.exec_module(vmap)

port, files = sys.argv[1], sys.argv[2].split(",")
args = Namespace(listen_address="127.0.0.1", listen_port=port, blocksize=4096, threads=1,
                 verbose=False, export_name="sda", sshClient=None)

stream = vmap.streamer.SparseStream(vmap.types)
stypes = vmap.types.SparseStreamTypes()
ranges = []
for name in files:
    with open(name, "rb") as reader:
        r, _meta = vmap.getDataRanges(stream, stypes, reader)
        ranges.extend(r)

blockmap = tempfile.NamedTemporaryFile(delete=False, prefix="block.", suffix=".map")
vmap.dumpBlockMap(blockmap, ranges)
blockmap.close()
proc = vmap.qemu.util(args.export_name).startNbdkitProcess(
    args, "/usr/bin/virtnbd-nbdkit-plugin", blockmap.name, os.path.abspath(files[0]))

# replayChanges: every record of every incremental file, written at its guest offset.
h = nbd.NBD()
h.connect_uri(f"nbd://127.0.0.1:{port}/{args.export_name}")
for extent in (x for x in ranges if x["inc"] is True):
    with open(extent["file"], "rb") as src:
        src.seek(extent["offset"])
        done = 0
        while done < extent["length"]:  # NBD requests are capped at 32 MiB
            chunk = src.read(min(extent["length"] - done, 32 << 20))
            h.pwrite(chunk, extent["originalOffset"] + done)
            done += len(chunk)
h.flush()
h.shutdown()
print(proc.pid)
