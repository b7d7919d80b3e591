// Elman RNN forward persistent kernel (cell 2 tanh, cell 3 relu), instantiated for fp16, bf16, fp32 (TF32) and fp32 (3xTF32), each with 1 and 2 n-tiles per pass, without and with zoneout (ZO).
// One file per direction for the two nonlinearities (one gate: small instantiations), compiled in parallel with the others.
#include "rnn_kernels.cuh"

namespace fusedrnn {
const void* elman_fwd_kernel(int cell, DType d, int mode, int ntiles, bool zo) {
  return cell == (int)Cell::RNN_RELU ? select_fwd_kernel<3>(d, mode, ntiles, zo)
                                     : select_fwd_kernel<2>(d, mode, ntiles, zo);
}
}  // namespace fusedrnn
