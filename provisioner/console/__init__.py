"""Node consoles without a BMC: the kernel messages nodes send with netconsole.

- protocol.py: pure: one datagram -> kernel lines (plain and extended netconsole), or a
  reason to drop it;
- watch.py: pure: which lines go on the node's timeline (a boot's first lines, panics,
  oopses, hung tasks), within a per-node budget;
- store.py: the lines kept per node under ``<state_dir>/console/``, bounded, and read back
  (``node console``, ``GET /api/v1/nodes/{key}/console``);
- service.py: the UDP listener of ``provisioner serve`` (asyncio), the thin adapter.
"""
