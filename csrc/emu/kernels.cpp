// The four kernel files of csrc/, compiled for the host by the CPU emulator (-DFUSEDRNN_EMULATE):
// the same source and the same instantiations as the nvcc build.
#include "../gru_bwd.cu"
#include "../gru_fwd.cu"
#include "../lstm_bwd.cu"
#include "../lstm_fwd.cu"
