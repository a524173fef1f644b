"""roofsim: plan, predict and run long-context inference whose KV cache outgrows the GPU.

The flow: ModelSpec + GpuSpec/HostSpec + Workload -> Plan -> roofline (analytic) -> Prediction.
"""

__version__ = "0.1.0"
