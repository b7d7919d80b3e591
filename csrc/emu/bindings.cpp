// Python module of the CPU emulator build (tests/cuda_emu.py builds it with torch's cpp_extension):
// the same gru_forward ... lstm_backward, launch_shape and plan functions as fusedrnn._C, taking CPU
// tensors, plus the emulator's controls.
#include <torch/extension.h>

#include "runtime.h"

namespace fusedrnn {
void register_rnn(pybind11::module_& m);  // csrc/rnn_ops.cpp, compiled with -DFUSEDRNN_EMULATE
}  // namespace fusedrnn
namespace fusedrnn_emu {
torch::Tensor selftest(const std::string& name, int64_t variant, const torch::Tensor& in);  // selftest.cpp
std::vector<torch::Tensor> philox(const torch::Tensor& seeds, const torch::Tensor& offsets);  // selftest.cpp
}  // namespace fusedrnn_emu

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "fusedrnn's CUDA kernels run on the CPU by an emulator of the CUDA execution model (tests only)";
  fusedrnn::register_rnn(m);
  m.def(
      "set_schedule",
      [](const std::string& mode, uint64_t seed) {
        fusedrnn_emu::Schedule s;
        if (mode == "in_order") {
          s = fusedrnn_emu::Schedule::InOrder;
        } else if (mode == "reversed") {
          s = fusedrnn_emu::Schedule::Reversed;
        } else if (mode == "shuffled") {
          s = fusedrnn_emu::Schedule::Shuffled;
        } else if (mode == "eager") {
          s = fusedrnn_emu::Schedule::Eager;
        } else if (mode == "eager_shuffled") {
          s = fusedrnn_emu::Schedule::EagerShuffled;
        } else {
          throw py::value_error("schedule must be 'in_order', 'reversed', 'shuffled', 'eager' or 'eager_shuffled', got '" +
                                mode + "'");
        }
        fusedrnn_emu::set_schedule(s, seed);
      },
      "order in which the threads that are ready between two barriers run", py::arg("mode"), py::arg("seed") = 0);
  m.def("stats", [] {
    const auto s = fusedrnn_emu::stats();
    py::dict d;
    d["launches"] = s.launches;
    d["grid_barriers"] = s.grid_barriers;
    d["block_barriers"] = s.block_barriers;
    d["warp_barriers"] = s.warp_barriers;
    d["switches"] = s.switches;
    return d;
  }, "counters since the last reset_stats()");
  m.def("reset_stats", &fusedrnn_emu::reset_stats);
  m.def("set_device", &fusedrnn_emu::set_device, "the emulated device's SMs and opt-in shared memory per CTA",
        py::arg("num_sms"), py::arg("smem_optin"));
  m.def("selftest", &fusedrnn_emu::selftest, "run one of the emulator's self-test kernels (csrc/emu/selftest.cpp)",
        py::arg("name"), py::arg("variant"), py::arg("input"));
  m.def("philox", &fusedrnn_emu::philox,
        "zoneout's Philox as the kernels compute it (csrc/ptx.cuh): (first word, float32 uniform) per (seed, offset)",
        py::arg("seeds"), py::arg("offsets"));
}
