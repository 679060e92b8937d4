"""`pconv serve`: the model on a real Triton Inference Server.

- :mod:`pconv_deploy.serve.launcher` runs in the main environment (no PyTriton, no numpy): it finds the
  serve environment and runs the server there, relaying SIGINT/SIGTERM.
- :mod:`pconv_deploy.serve.server` runs in the serve environment (PyTriton, numpy<2, no torch): Triton with
  the runtime's backend behind it, on private loopback ports (:mod:`pconv_deploy.serve.upstream`: its
  ports, its log, the warm-up request that comes before "ready").
- :mod:`pconv_deploy.serve.fronts` owns the public HTTP and gRPC ports: it passes on only the calls a
  client needs, and every inference request only once :mod:`pconv_deploy.serve.checks` found it within
  the contract (tritonserver allocates what a request declares before it checks it).
"""
