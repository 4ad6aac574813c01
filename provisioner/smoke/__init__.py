"""Inference smoke tests: is the cluster serving, fast enough, with every worker used?

- :mod:`~provisioner.smoke.stream`: SSE decoding and the TTFT / tokens-per-second arithmetic
  (pure).
- :mod:`~provisioner.smoke.rpc`: llama.cpp's buffer lines and ``ss`` counters (pure).
- :mod:`~provisioner.smoke.report`: :class:`Report` of :class:`Check` s, JSON and table.
- :mod:`~provisioner.smoke.client`: the stdlib HTTP client (``/health``, ``/v1/models``, a
  streamed ``/v1/chat/completions``).
- :mod:`~provisioner.smoke.run`: :func:`run_smoke`, which puts them together (and the
  embedding check for models that do not generate).
- :mod:`~provisioner.smoke.load`: the load check (N requests, C at a time: requests per
  minute, p50/p99 latency); percentiles and summaries pure, a thread pool around them.
- :mod:`~provisioner.smoke.ray`: what Ray says of a cluster's members (``ray.nodes()``
  through the GCS), as checks (pure parsing; the command is run on the head over SSH).
- :mod:`~provisioner.smoke.cluster`: the checks that need a shell on the nodes (units,
  the head's log, a restart).
"""

from __future__ import annotations

from provisioner.smoke.report import Check, Report, render_table
from provisioner.smoke.run import Floors, Worker, local_ss, run_smoke

__all__ = ["Check", "Floors", "Report", "Worker", "local_ss", "render_table", "run_smoke"]
