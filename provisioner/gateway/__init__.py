"""The serving front door: one OpenAI-compatible URL for every model the clusters serve.

``POST /v1/chat/completions`` (``/v1/completions``, ``/v1/embeddings``) on the control
node's HTTP port (``provisioner serve``) or on a gateway of its own (``provisioner gateway
serve``) goes to a *replica* of the body's ``model``: every cluster that serves that name.
The modules, pure cores first:

- :mod:`.replicas`: the replica table, made from the registry's clusters, their heads'
  states and their last smoke's decode tokens/s;
- :mod:`.balance`: which replica takes a request (least outstanding weighted by tokens/s,
  session affinity, prefix-aware as an option), and the order of the fallbacks;
- :mod:`.health`: which replicas are up (passive: a failed connection drains one at once;
  active: a probe of each replica's ``/health`` every second brings it back);
- :mod:`.apikeys` and :mod:`.ratelimit`: the gateway's API keys (hashed at rest, shown
  once, scoped to models) and their requests-per-minute limits;
- :mod:`.sse`: what passes through a stream (first token, tokens, usage) and the SSE
  error event that ends a cut one;
- :mod:`.wire`: the OpenAI error format and what crosses the proxy of a request's headers;
- :mod:`.source` (I/O): the table and keys read from the registry, usage written back;
- :mod:`.stats`: the live figures behind ``gateway status`` and ``/metrics``;
- :mod:`.frontdoor` (I/O): the proxy: retries before the first byte, relays the rest;
- :mod:`.routes`: the HTTP routes, for ``serve``'s app (boot/http.py) and the gateway's
  own (``provisioner gateway serve``: boot/gateway_alone.py).
"""
