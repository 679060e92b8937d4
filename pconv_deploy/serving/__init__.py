"""Serving: the model on a Triton Inference Server, and the client that sends it batches.

- :mod:`pconv_deploy.serving.options`: :class:`ServeOptions` and :class:`RepositoryOptions`, the frozen,
  validated options of `pconv serve` and `pconv triton-repo` (standard library only).
- :mod:`pconv_deploy.serving.repository` writes a Triton model repository for an exported model or an
  engine (`pconv triton-repo`).
- :mod:`pconv_deploy.serving.launcher` runs in the main environment (no PyTriton, no numpy): it finds the
  serve interpreter and runs the server with it, relaying SIGINT/SIGTERM.
- :mod:`pconv_deploy.serving.server` runs in the serve environment (PyTriton, numpy<2, no torch): Triton with
  the runtime's backend behind it, on private loopback ports (:mod:`pconv_deploy.serving.upstream`: its
  ports, its log, the warm-up request that comes before "ready").
- :mod:`pconv_deploy.serving.fronts` owns the public HTTP and gRPC ports: it passes on only the calls a
  client needs, and every inference request only once :mod:`pconv_deploy.serving.checks` found it within
  the contract (tritonserver allocates what a request declares before it checks it).
- :mod:`pconv_deploy.serving.client`: :class:`TritonBackend`, a runtime backend that runs batches on Triton
  servers (`pconv infer --server`, `pconv app --server`); numpy and tritonclient, no torch.

Nothing here is imported by the runtime: the CLI and the app pick the client backend.
"""
