"""roofsim.executor: the torch runtime that runs a Plan on CUDA and records a measured Trace (issue #5).

Imported only by `roofsim run`; the rest of roofsim never needs torch.
"""
