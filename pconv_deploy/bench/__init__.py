"""`pconv bench`: the toolkit's speed side by side, every figure measured in one run.

Shared machines are noisy (20-50% between runs here), so the results that matter are ratios
taken inside one run, and the comparisons that give the ratios are interleaved round by round
in one process (ours, plain, naive, GEMM, ours, plain, ...), so a load change hits all of them.

- Main table: images/s and latency per configuration (backend and precision), size and batch.
  Each configuration runs in its own subprocess, so its peak RSS (VmHWM) is its own.
- Mask-path cost: our export against the same U-Net with plain convolutions, exported the same
  way (:mod:`pconv_deploy.export.variants`); and against a naive C_out x C_in mask convolution.
- Efficiency: our graph's conv GFLOP/s over the best large float32 GEMM of the same run.
- Pipeline: ``run_folder`` (what ``pconv infer`` runs) against the model alone on the same batches.

Modules: ``spec`` (settings, worker specs, report types), ``prepare`` (models and export cache),
``workers`` (one measurement per subprocess), ``stats`` (the ratios), ``report`` (tables, JSON),
``run`` (orchestration). Import from those modules: this package stays light for the CLI.
"""
