// Python bindings for fusedrnn._C: build metadata, checked at import by fusedrnn/_ext.py.
// The recurrence kernels' functions come from csrc/rnn_ops.cpp (register_rnn); fusedrnn/backends/cuda.py
// wraps them in torch.library custom ops.
#include <torch/extension.h>

#ifndef FUSEDRNN_TORCH_VERSION
#define FUSEDRNN_TORCH_VERSION "unknown"
#endif
#ifndef FUSEDRNN_CUDA_VERSION
#define FUSEDRNN_CUDA_VERSION "unknown"
#endif
#ifndef FUSEDRNN_ARCH_LIST
#define FUSEDRNN_ARCH_LIST "unknown"
#endif
#ifndef FUSEDRNN_SOURCE_HASH
#define FUSEDRNN_SOURCE_HASH "unknown"
#endif

namespace fusedrnn {
void register_rnn(pybind11::module_& m);  // csrc/rnn_ops.cpp
}  // namespace fusedrnn

namespace {
pybind11::dict build_info() {
  pybind11::dict info;
  info["torch_version"] = FUSEDRNN_TORCH_VERSION;
  info["cuda_version"] = FUSEDRNN_CUDA_VERSION;
  info["arch_list"] = FUSEDRNN_ARCH_LIST;
  info["source_hash"] = FUSEDRNN_SOURCE_HASH;  // the kernel fingerprint GPU validation records refer to
  return info;
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fusedrnn CUDA extension";
  m.def("build_info", &build_info, "torch/CUDA versions and archs this extension was built for");
  fusedrnn::register_rnn(m);
}
