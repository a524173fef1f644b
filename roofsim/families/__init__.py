"""One module per plan family; each turns a plan and a context into step costs and memory (an Evaluation)."""

from roofsim.families.cpu_attention import evaluate_cpu_attention
from roofsim.families.evict import evaluate_evict
from roofsim.families.kvpr import evaluate_kvpr
from roofsim.families.sparse_fetch import evaluate_sparse_fetch
from roofsim.families.streaming import evaluate_head_offload, evaluate_layer_offload, evaluate_resident

EVALUATORS = {
    "resident": evaluate_resident,
    "layer_offload": evaluate_layer_offload,
    "head_offload": evaluate_head_offload,
    "kvpr": evaluate_kvpr,
    "cpu_attention": evaluate_cpu_attention,
    "sparse_fetch": evaluate_sparse_fetch,
    "evict": evaluate_evict,
}
