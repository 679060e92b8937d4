"""`pconv serve`: the model on a real Triton Inference Server.

- :mod:`pconv_deploy.serve.launcher` runs in the main environment (no PyTriton, no numpy): it finds the
  serve environment and runs the server there, relaying SIGINT/SIGTERM.
- :mod:`pconv_deploy.serve.server` runs in the serve environment (PyTriton, numpy<2, no torch): Triton with
  the runtime's backend behind it.
"""
