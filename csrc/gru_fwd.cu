// GRU forward persistent kernel: fp16, bf16, fp32 (TF32 MMA) and fp32 (exact FMA) instantiations.
// One file per (cell, direction) so that the instantiations compile in parallel.
#include "rnn_kernels.cuh"

namespace fusedrnn {
const void* gru_fwd_kernel(DType d, bool tf32) { return select_kernel<0, false>(d, tf32); }
}  // namespace fusedrnn
