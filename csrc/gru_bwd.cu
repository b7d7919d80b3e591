// GRU backward persistent kernel, instantiated for fp16, bf16, fp32 (TF32) and fp32 (3xTF32), each with 16 and 32 units per CTA and 1 and 2 n-tiles per pass, without and with zoneout (ZO).
// One file per (cell, direction) so that the instantiations compile in parallel.
#include "rnn_kernels.cuh"

namespace fusedrnn {
const void* gru_bwd_kernel(DType d, int mode, int mtiles, int ntiles, bool zo) {
  return select_bwd_kernel<0>(d, mode, mtiles, ntiles, zo);
}
}  // namespace fusedrnn
