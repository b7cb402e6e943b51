"""How data-parallel gradients travel (paper III.B, Formulas 8-11).

- config:          GradSyncConfig (algorithm, compressor, megatron-core knob names) + validation
- hooks:           DDP communication hooks (ring, hierarchical, sign, topk, powersgd, fp16, bf16)
                   and make_grad_sync_hook(config) -> (state, hook)
- codecs:          sign / top-k wire formats
- residuals:       error-feedback residuals per bucket, checkpointable
- stats:           CommStats, per-rank bytes and times
- byte_formulas:   payload and standard-algorithm wire bytes
- collective_bench + cli: `recpar bench collectives`

Imports here stay light (no torch): use the submodules.
"""
