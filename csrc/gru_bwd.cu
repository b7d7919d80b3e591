// GRU backward persistent kernel, instantiated for fp16, bf16, fp32 (TF32) and fp32 (3xTF32), each with 16 and 32 units per CTA.
// One file per (cell, direction) so that the instantiations compile in parallel.
#include "rnn_kernels.cuh"

namespace fusedrnn {
const void* gru_bwd_kernel(DType d, int mode, int mtiles) { return select_bwd_kernel<0>(d, mode, mtiles); }
}  // namespace fusedrnn
