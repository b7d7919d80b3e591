// csrc/rnn_bwd.cu compiled for the host by the CPU emulator (-DFUSEDRNN_EMULATE): the same source and
// instantiations as the nvcc build, one translation unit per kernel file so they compile in parallel.
#include "../rnn_bwd.cu"
