// Torch-facing glue of the persistent recurrence kernels: named input checks, buffer allocation,
// dtype dispatch, launch on the current CUDA stream. fusedrnn/backends/cuda.py wraps these in
// torch.library custom ops with fake implementations and autograd; the input projection
// (x·W_ihᵀ + b_ih) and the weight/input gradients are torch GEMMs there.
#include <torch/extension.h>

#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "rnn_launch.h"

#if defined(FUSEDRNN_EMULATE)
#include "emu/runtime.h"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace fusedrnn {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// ---------------------------------------------------------------------------------------------
// Where the kernels run. The CUDA build (setup.py) launches on the current CUDA stream; the CPU
// emulator build (csrc/emu/, tests/test_cuda_kernels.py, -DFUSEDRNN_EMULATE) runs the same kernels on
// CPU tensors, with every buffer the kernel touches between guard zones and its outputs filled
// with NaN, so that an out-of-bounds write or a read of an unwritten element shows.
// ---------------------------------------------------------------------------------------------
#if defined(FUSEDRNN_EMULATE)
constexpr const char* kDeviceKind = "CPU (emulator)";
bool on_kernel_device(const Tensor& t) { return t.is_cpu(); }
struct DeviceScope {  // guard zones belong to one call
  explicit DeviceScope(const Tensor&) { fusedrnn_emu::clear_guards(); }
  ~DeviceScope() { fusedrnn_emu::clear_guards(); }
};
struct DeviceIndexScope {  // one emulated device
  explicit DeviceIndexScope(int64_t) {}
};
void check_device(const Tensor&) {}
cudaStream_t current_stream() { return nullptr; }
// A buffer of `shape` whose data starts `misalign` bytes past a 64-byte boundary, between guard zones
// at least as large as itself (0xFD bytes, checked after the launch), its contents 0xFF bytes (NaN in
// fp16/bf16/fp32: an element the kernel should have written and did not shows).
Tensor kernel_buffer(at::IntArrayRef shape, const at::TensorOptions& opts, const char* name, int64_t misalign = 0) {
  const int64_t esize = (int64_t)c10::elementSize(c10::typeMetaToScalarType(opts.dtype()));
  const int64_t numel = c10::multiply_integers(shape), nbytes = numel * esize;
  const int64_t guard = std::max<int64_t>(256, (nbytes + 63) / 64 * 64) + misalign;
  Tensor storage = at::empty({(2 * guard + nbytes + esize - 1) / esize}, opts);  // 64-byte aligned (CPU allocator)
  auto bytes = storage.view(at::kByte);
  bytes.fill_(fusedrnn_emu::kGuardByte);
  bytes.narrow(0, guard, nbytes).fill_(fusedrnn_emu::kUnwrittenByte);
  auto* base = static_cast<unsigned char*>(storage.data_ptr());
  fusedrnn_emu::add_guard(base, guard, std::string(name) + " (before)");
  fusedrnn_emu::add_guard(base + guard + nbytes, storage.numel() * esize - guard - nbytes, std::string(name) + " (after)");
  return storage.narrow(0, guard / esize, numel).view(shape);
}
// A kernel input: a guarded contiguous copy, as misaligned (mod 64 bytes) as the caller's tensor.
Tensor kernel_input(const Tensor& t, const char* name) {
  const int64_t misalign = (int64_t)(reinterpret_cast<uintptr_t>(t.data_ptr()) % 64);
  return kernel_buffer(t.sizes(), t.options(), name, misalign).copy_(t);
}
void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "fusedrnn emulator: ", what, " failed: ", fusedrnn_emu::last_error());
}
// Returned tensors get their own storage (not views into a guarded buffer), like at::empty's.
std::vector<Tensor> outputs(std::vector<Tensor> v) {
  for (Tensor& t : v)
    if (t.defined()) t = t.clone();
  return v;
}
#else
constexpr const char* kDeviceKind = "CUDA";
bool on_kernel_device(const Tensor& t) { return t.is_cuda(); }
struct DeviceScope {  // the tensor's device is current for the call
  explicit DeviceScope(const Tensor& t) : guard(t.device()) {}
  c10::cuda::CUDAGuard guard;
};
struct DeviceIndexScope {
  explicit DeviceIndexScope(int64_t device) : guard((c10::DeviceIndex)device) {}
  c10::cuda::CUDAGuard guard;
};
cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }
Tensor kernel_buffer(at::IntArrayRef shape, const at::TensorOptions& opts, const char*) { return at::empty(shape, opts); }
Tensor kernel_input(const Tensor& t, const char*) { return t.contiguous(); }
std::vector<Tensor> outputs(std::vector<Tensor> v) { return v; }

// The kernels are compiled for sm_80+ only; on an older device their body is __trap(), which would
// poison the whole CUDA context, so refuse before launching (fusedrnn.backends.cuda.limits says the same).
void check_device(const Tensor& ref) {
  int major = 0, minor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, ref.device().index()));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, ref.device().index()));
  TORCH_CHECK(major >= 8, "fusedrnn cuda: compute capability ", major, ".", minor, " is not supported (needs >= 8.0)");
}

void check_launch(cudaError_t err, const char* what) {
  // A failed launch leaves the error in the runtime's last-error slot, where the next unrelated
  // C10_CUDA_KERNEL_LAUNCH_CHECK would report it: clear it before raising.
  if (err != cudaSuccess) (void)cudaGetLastError();
  if (err == cudaErrorCooperativeLaunchTooLarge) {
    TORCH_CHECK(false, "fusedrnn cuda: ", what, " cannot be launched: its grid of CTAs is not co-resident on this "
                "GPU (shared memory or SM count); fusedrnn.backends.cuda.limits() should have rejected this problem");
  }
  C10_CUDA_CHECK(err);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
#endif

DType dtype_of(at::ScalarType s) {
  switch (s) {
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    case at::kFloat: return DType::F32;
    default: TORCH_CHECK(false, "fusedrnn cuda: dtype ", s, " is not supported (float16, bfloat16, float32)");
  }
}

DType dtype_from_name(const std::string& name) {
  if (name == "float16" || name == "torch.float16") return DType::F16;
  if (name == "bfloat16" || name == "torch.bfloat16") return DType::BF16;
  if (name == "float32" || name == "torch.float32") return DType::F32;
  TORCH_CHECK(false, "fusedrnn cuda: dtype ", name, " is not supported (float16, bfloat16, float32)");
}


void check_arg(const Tensor& t, const char* name, const Tensor& ref, at::IntArrayRef shape) {
  TORCH_CHECK(on_kernel_device(t), "fusedrnn cuda: ", name, " must be a ", kDeviceKind, " tensor, got device ", t.device());
  TORCH_CHECK(t.device() == ref.device(), "fusedrnn cuda: ", name, " is on ", t.device(), " but gx is on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "fusedrnn cuda: ", name, " has dtype ", t.scalar_type(),
              " but gx has dtype ", ref.scalar_type());
  TORCH_CHECK(t.sizes() == shape, "fusedrnn cuda: ", name, " must have shape ", shape, ", got ", t.sizes());
}

void check_float_arg(const Tensor& t, const char* name, const Tensor& ref, at::IntArrayRef shape) {
  TORCH_CHECK(t.device() == ref.device() && t.scalar_type() == at::kFloat && t.sizes() == shape, "fusedrnn cuda: ",
              name, " must be a float32 tensor of shape ", shape, " on ", ref.device(), ", got ", t.scalar_type(),
              " ", t.sizes(), " on ", t.device());
}

// lengths: int64 (B,) on any device; moved to the kernel's device.
Tensor lengths_on(const OptTensor& lengths, const Tensor& ref, int64_t B) {
  if (!lengths.has_value()) return Tensor();
  const Tensor& l = *lengths;
  TORCH_CHECK(l.scalar_type() == at::kLong && l.dim() == 1 && l.size(0) == B,
              "fusedrnn cuda: lengths must be an int64 tensor of shape (", B, "), got ", l.scalar_type(), " ",
              l.sizes());
  return l.to(ref.device(), at::kLong).contiguous();
}


void check_sizes(int64_t T, int64_t B, int64_t H, int64_t G) {
  const int64_t int_max = std::numeric_limits<int>::max();
  TORCH_CHECK(T >= 1, "fusedrnn cuda: T must be >= 1, got ", T);
  TORCH_CHECK(H >= 1, "fusedrnn cuda: H must be >= 1, got ", H);
  TORCH_CHECK(T <= int_max && B <= int_max && G <= int_max, "fusedrnn cuda: T, B and the gate width must fit int32");
}


// The plan of a launch on the current device (the emulator's device in the emulator build).
Plan device_plan(Cell cell, bool backward, DType dt, bool tf32, int64_t H, int64_t B) {
  int sms = 0, optin = 0;
  check_launch(device_limits(&sms, &optin), "querying the device");
  return make_plan(cell, backward, dt, tf32, (int)H, (int)B, sms, (size_t)optin);
}

void check_rows(const Plan& p) {
  TORCH_CHECK(p.rows <= kMaxRows, "fusedrnn cuda: batch size ", p.B, " needs ", p.rows, " rows per CTA at H=", p.H,
              " (", p.n_bg, " batch groups); the kernels hold at most ", kMaxRows,
              " (fusedrnn.backends.cuda.limits() should have rejected this problem)");
}

// The plan's ready flags (one per CTA, zeroed), or an undefined tensor for grid barriers.
Tensor ready_flags_for(const Plan& p, bool ready_flags, const at::TensorOptions& opts) {
  return ready_flags ? at::zeros({(int64_t)p.n_bg * p.n_ug}, opts.dtype(at::kInt)) : Tensor();
}

// Zoneout (fusedrnn/backends/cuda.py: zo_p [] or [p_h, p_c], zo_seeds the (2,) int64 seeds h, c in
// training, None in evaluation): the launch's ZoneParams, and whether the ZO kernel runs (a state of
// the cell with p > 0; zo_p all zero runs the plain kernel, which computes the same).
struct ZoneArgs {
  ZoneParams zp{};
  bool zoned = false;
};
ZoneArgs zone_args(Cell cell, const std::vector<double>& zo_p, const OptTensor& zo_seeds, const Tensor& ref) {
  ZoneArgs a;
  if (zo_p.empty()) {
    TORCH_CHECK(!zo_seeds.has_value(), "fusedrnn cuda: zo_seeds given without zo_p (the zoneout probabilities)");
    return a;
  }
  TORCH_CHECK(zo_p.size() == 2, "fusedrnn cuda: zo_p must be [] or [p_h, p_c], got ", zo_p.size(), " values");
  for (int w = 0; w < 2; ++w) {
    TORCH_CHECK(zo_p[w] >= 0.0 && zo_p[w] < 1.0, "fusedrnn cuda: zo_p[", w, "] (zoneout p_", w == 0 ? "h" : "c",
                ") must be in [0, 1), got ", zo_p[w]);
    a.zp.p[w] = (float)zo_p[w];
    a.zp.q[w] = (float)(1.0 - zo_p[w]);
  }
  if (zo_seeds.has_value()) {
    const Tensor& s = *zo_seeds;
    TORCH_CHECK(s.scalar_type() == at::kLong && s.dim() == 1 && s.size(0) == 2,
                "fusedrnn cuda: zo_seeds must be an int64 tensor of shape (2,) (the h and c seeds), got ",
                s.scalar_type(), " ", s.sizes());
    TORCH_CHECK(s.device() == ref.device(), "fusedrnn cuda: zo_seeds is on ", s.device(), " but ", ref.device(),
                " is the kernel's device (the kernel reads the seeds from device memory)");
  }
  a.zoned = a.zp.p[0] > 0.f || (cell == Cell::LSTM && a.zp.p[1] > 0.f);
  return a;
}

// gx (T,B,G), h0 (B,H), c0 (B,H) for LSTM, w_hh (G,H), b_hh (G,), residual (T,B,H), lengths (B,).
// Returns {y, h_n, c_n (LSTM; else undefined), hist, saved (empty unless save)}. ready_flags: per-CTA
// ready flags between steps instead of grid barriers (off by default; see ptx.cuh).
std::vector<Tensor> rnn_forward(Cell cell, const Tensor& gx, const Tensor& h0, const OptTensor& c0, const Tensor& w_hh,
                                const OptTensor& b_hh, const OptTensor& residual, const OptTensor& lengths,
                                bool reverse, bool save, bool allow_tf32, bool ready_flags,
                                const std::vector<double>& zo_p, const OptTensor& zo_seeds) {
  TORCH_CHECK(on_kernel_device(gx) && gx.dim() == 3, "fusedrnn cuda: gx must be a 3-D ", kDeviceKind,
              " tensor (T, B, G), got ", gx.sizes(), " on ", gx.device());
  const DType dt = dtype_of(gx.scalar_type());
  const int ng = n_gates((int)cell);
  const int64_t T = gx.size(0), B = gx.size(1), G = gx.size(2);
  TORCH_CHECK(G % ng == 0, "fusedrnn cuda: gx's last dim ", G, " is not a multiple of ", ng);
  const int64_t H = G / ng;
  check_sizes(T, B, H, G);
  check_arg(h0, "h0", gx, {B, H});
  check_arg(w_hh, "w_hh", gx, {G, H});
  if (b_hh) check_arg(*b_hh, "b_hh", gx, {G});
  if (residual) check_arg(*residual, "residual", gx, {T, B, H});
  const bool is_lstm = cell == Cell::LSTM;
  if (c0) check_arg(*c0, "c0", gx, {B, H});
  TORCH_CHECK(T * B * std::max<int64_t>(G, 5 * H) < (int64_t(1) << 62), "fusedrnn cuda: problem too large");
  ZoneArgs zo = zone_args(cell, zo_p, zo_seeds, gx);

  DeviceScope scope(gx);
  check_device(gx);
  const auto opts = gx.options();
  const auto fopts = opts.dtype(at::kFloat);
  Tensor y = kernel_buffer({T, B, H}, opts, "y");
  Tensor hist = kernel_buffer({T, B, H}, opts, "hist");
  Tensor saved = save ? kernel_buffer({T, B, n_saved((int)cell) * H}, fopts, "saved") : at::empty({0}, fopts);
  Tensor h_state = kernel_buffer({B, H}, fopts, "h_state");
  h_state.copy_(h0);  // a copy also for fp32: the kernel updates it in place
  Tensor c_state;
  if (is_lstm) {
    c_state = kernel_buffer({B, H}, fopts, "c_state");
    c_state.copy_(*c0);
  }
  if (B == 0) return {y, h0.clone(), is_lstm ? c0->clone() : Tensor(), hist, saved};
  hist.select(0, reverse ? T - 1 : 0).copy_(h0);

  const Tensor gx_c = kernel_input(gx, "gx"), w_c = kernel_input(w_hh, "w_hh");
  const Tensor b_c = b_hh ? kernel_input(*b_hh, "b_hh") : Tensor();
  const Tensor r_c = residual ? kernel_input(*residual, "residual") : Tensor();
  const Tensor len = lengths.has_value() ? kernel_input(lengths_on(lengths, gx, B), "lengths") : Tensor();
  const Tensor seeds_c = zo.zoned && zo_seeds.has_value() ? kernel_input(*zo_seeds, "zo_seeds") : Tensor();

  FwdParams p{};
  p.plan = device_plan(cell, false, dt, allow_tf32 && dt == DType::F32, H, B);
  check_rows(p.plan);
  p.T = (int)T;
  p.reverse = reverse;
  p.gx = gx_c.data_ptr();
  p.w_hh = w_c.data_ptr();
  p.b_hh = b_hh ? b_c.data_ptr() : nullptr;
  p.residual = residual ? r_c.data_ptr() : nullptr;
  p.lengths = len.defined() ? len.data_ptr<int64_t>() : nullptr;
  p.y = y.data_ptr();
  p.hist = hist.data_ptr();
  p.h_state = h_state.data_ptr<float>();
  p.c_state = is_lstm ? c_state.data_ptr<float>() : nullptr;
  p.saved = save ? saved.data_ptr<float>() : nullptr;
  const Tensor ready = ready_flags_for(p.plan, ready_flags, opts);
  p.ready = ready.defined() ? ready.data_ptr<int>() : nullptr;
  p.zo = zo.zp;
  p.zo.seeds = seeds_c.defined() ? seeds_c.data_ptr<int64_t>() : nullptr;
  check_launch(launch_cooperative(rnn_kernel(p.plan, dt, zo.zoned), p.plan, &p, current_stream()), "the forward kernel");
  return outputs({y, h_state.to(gx.scalar_type()), is_lstm ? c_state.to(gx.scalar_type()) : Tensor(), hist, saved});
}

// dy (T,B,H) and dh_n (B,H) in the input dtype, dc_n (B,H) for LSTM; hist/saved from the forward.
// Returns {dgh (T,B,G), dgx_n (T,B,H) for GRU (else undefined), dh0, dc0 (LSTM; else undefined)}.
// (For the LSTM and the Elman RNN dgx = dgh; the GRU's gx_n enters without the factor r.)
std::vector<Tensor> rnn_backward(Cell cell, const Tensor& dy, const Tensor& dh_n, const OptTensor& dc_n,
                                 const Tensor& w_hh, const Tensor& hist, const Tensor& saved,
                                 const OptTensor& lengths, bool reverse, bool allow_tf32, bool ready_flags,
                                 const std::vector<double>& zo_p, const OptTensor& zo_seeds) {
  TORCH_CHECK(on_kernel_device(dy) && dy.dim() == 3, "fusedrnn cuda: dy must be a 3-D ", kDeviceKind,
              " tensor (T, B, H), got ", dy.sizes(), " on ", dy.device());
  const DType dt = dtype_of(dy.scalar_type());
  const int ng = n_gates((int)cell);
  const int64_t T = dy.size(0), B = dy.size(1), H = dy.size(2), G = ng * H;
  check_sizes(T, B, H, G);
  check_arg(dh_n, "dh_n", dy, {B, H});
  check_arg(w_hh, "w_hh", dy, {G, H});
  check_arg(hist, "hist", dy, {T, B, H});
  check_float_arg(saved, "saved (the forward was run without saving for backward?)", dy,
                  {T, B, n_saved((int)cell) * H});
  const bool is_lstm = cell == Cell::LSTM, is_gru = cell == Cell::GRU;
  if (dc_n) check_arg(*dc_n, "dc_n", dy, {B, H});
  ZoneArgs zo = zone_args(cell, zo_p, zo_seeds, dy);

  DeviceScope scope(dy);
  check_device(dy);
  const auto opts = dy.options();
  const auto fopts = opts.dtype(at::kFloat);
  Tensor dgh = kernel_buffer({T, B, G}, opts, "dgh");
  Tensor dgx_n = is_gru ? kernel_buffer({T, B, H}, opts, "dgx_n") : Tensor();
  Tensor dh = kernel_buffer({B, H}, fopts, "dh");
  dh.copy_(dh_n);
  Tensor dc;
  if (is_lstm) {
    dc = kernel_buffer({B, H}, fopts, "dc");
    dc.copy_(*dc_n);
  }
  if (B == 0) return {dgh, dgx_n, dh.to(dy.scalar_type()), is_lstm ? dc.to(dy.scalar_type()) : Tensor()};

  const Tensor dy_c = kernel_input(dy, "dy"), w_c = kernel_input(w_hh, "w_hh");
  const Tensor hist_c = kernel_input(hist, "hist"), saved_c = kernel_input(saved, "saved");
  const Tensor len = lengths.has_value() ? kernel_input(lengths_on(lengths, dy, B), "lengths") : Tensor();
  const Tensor seeds_c = zo.zoned && zo_seeds.has_value() ? kernel_input(*zo_seeds, "zo_seeds") : Tensor();

  BwdParams p{};
  p.plan = device_plan(cell, true, dt, allow_tf32 && dt == DType::F32, H, B);
  check_rows(p.plan);
  p.T = (int)T;
  p.reverse = reverse;
  p.w_hh = w_c.data_ptr();
  p.dy = dy_c.data_ptr();
  p.hist = hist_c.data_ptr();
  p.saved = saved_c.data_ptr<float>();
  p.lengths = len.defined() ? len.data_ptr<int64_t>() : nullptr;
  p.dgh = dgh.data_ptr();
  p.dgx_n = is_gru ? dgx_n.data_ptr() : nullptr;
  p.dh = dh.data_ptr<float>();
  p.dc = is_lstm ? dc.data_ptr<float>() : nullptr;
  const Tensor ready = ready_flags_for(p.plan, ready_flags, opts);
  p.ready = ready.defined() ? ready.data_ptr<int>() : nullptr;
  p.zo = zo.zp;
  p.zo.seeds = seeds_c.defined() ? seeds_c.data_ptr<int64_t>() : nullptr;
  check_launch(launch_cooperative(rnn_kernel(p.plan, dt, zo.zoned), p.plan, &p, current_stream()), "the backward kernel");
  return outputs({dgh, dgx_n, dh.to(dy.scalar_type()), is_lstm ? dc.to(dy.scalar_type()) : Tensor()});
}

// One function per cell and direction at the Python boundary: the argument lists say what each takes.
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward(const Tensor& gx, const Tensor& h0, const Tensor& w_hh,
                                                       const OptTensor& b_hh, const OptTensor& residual,
                                                       const OptTensor& lengths, bool reverse, bool save,
                                                       bool allow_tf32, bool ready_flags,
                                                       const std::vector<double>& zo_p, const OptTensor& zo_seeds) {
  auto o = rnn_forward(Cell::GRU, gx, h0, std::nullopt, w_hh, b_hh, residual, lengths, reverse, save, allow_tf32,
                       ready_flags, zo_p, zo_seeds);
  return {o[0], o[1], o[3], o[4]};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(const Tensor& gx, const Tensor& h0, const Tensor& c0,
                                                                const Tensor& w_hh, const OptTensor& b_hh,
                                                                const OptTensor& residual, const OptTensor& lengths,
                                                                bool reverse, bool save, bool allow_tf32,
                                                                bool ready_flags, const std::vector<double>& zo_p,
                                                                const OptTensor& zo_seeds) {
  auto o = rnn_forward(Cell::LSTM, gx, h0, c0, w_hh, b_hh, residual, lengths, reverse, save, allow_tf32, ready_flags,
                       zo_p, zo_seeds);
  return {o[0], o[1], o[2], o[3], o[4]};
}

std::tuple<Tensor, Tensor, Tensor> gru_backward(const Tensor& dy, const Tensor& dh_n, const Tensor& w_hh,
                                                const Tensor& hist, const Tensor& saved, const OptTensor& lengths,
                                                bool reverse, bool allow_tf32, bool ready_flags,
                                                const std::vector<double>& zo_p, const OptTensor& zo_seeds) {
  auto o = rnn_backward(Cell::GRU, dy, dh_n, std::nullopt, w_hh, hist, saved, lengths, reverse, allow_tf32,
                        ready_flags, zo_p, zo_seeds);
  return {o[0], o[1], o[2]};
}

std::tuple<Tensor, Tensor, Tensor> lstm_backward(const Tensor& dy, const Tensor& dh_n, const Tensor& dc_n,
                                                 const Tensor& w_hh, const Tensor& hist, const Tensor& saved,
                                                 const OptTensor& lengths, bool reverse, bool allow_tf32,
                                                 bool ready_flags, const std::vector<double>& zo_p,
                                                 const OptTensor& zo_seeds) {
  auto o = rnn_backward(Cell::LSTM, dy, dh_n, dc_n, w_hh, hist, saved, lengths, reverse, allow_tf32, ready_flags,
                        zo_p, zo_seeds);
  return {o[0], o[2], o[3]};
}

// The Elman RNN (cell "rnn_tanh" or "rnn_relu"): gru_forward's arguments and results, one gate.
Cell elman_cell(const std::string& name) {
  if (name == "rnn_tanh") return Cell::RNN_TANH;
  if (name == "rnn_relu") return Cell::RNN_RELU;
  TORCH_CHECK(false, "fusedrnn cuda: the Elman RNN cell must be 'rnn_tanh' or 'rnn_relu', got '", name, "'");
}

std::tuple<Tensor, Tensor, Tensor, Tensor> elman_forward(const std::string& cell, const Tensor& gx, const Tensor& h0,
                                                         const Tensor& w_hh, const OptTensor& b_hh,
                                                         const OptTensor& residual, const OptTensor& lengths,
                                                         bool reverse, bool save, bool allow_tf32, bool ready_flags,
                                                         const std::vector<double>& zo_p, const OptTensor& zo_seeds) {
  auto o = rnn_forward(elman_cell(cell), gx, h0, std::nullopt, w_hh, b_hh, residual, lengths, reverse, save,
                       allow_tf32, ready_flags, zo_p, zo_seeds);
  return {o[0], o[1], o[3], o[4]};
}

std::tuple<Tensor, Tensor> elman_backward(const std::string& cell, const Tensor& dy, const Tensor& dh_n,
                                          const Tensor& w_hh, const Tensor& hist, const Tensor& saved,
                                          const OptTensor& lengths, bool reverse, bool allow_tf32, bool ready_flags,
                                          const std::vector<double>& zo_p, const OptTensor& zo_seeds) {
  auto o = rnn_backward(elman_cell(cell), dy, dh_n, std::nullopt, w_hh, hist, saved, lengths, reverse, allow_tf32,
                        ready_flags, zo_p, zo_seeds);
  return {o[0], o[2]};
}

Cell cell_named(const std::string& name) {
  if (name == "gru") return Cell::GRU;
  if (name == "lstm") return Cell::LSTM;
  if (name == "rnn_tanh") return Cell::RNN_TANH;
  if (name == "rnn_relu") return Cell::RNN_RELU;
  TORCH_CHECK(false, "fusedrnn cuda: cell must be 'gru', 'lstm', 'rnn_tanh' or 'rnn_relu', got '", name, "'");
}

pybind11::dict plan_dict(const Plan& p) {
  pybind11::dict d;
  d["grid"] = p.grid;
  d["smem"] = (int64_t)p.bytes;
  d["threads"] = kThreads;
  d["units"] = p.units;
  d["mtiles"] = p.mtiles;
  d["unit_groups"] = p.n_ug;
  d["batch_groups"] = p.n_bg;
  d["rows"] = p.rows;
  d["max_rows"] = kMaxRows;
  d["passes"] = p.passes;
  d["pass_ntiles"] = p.pass_ntiles;
  d["kblock"] = p.kblock;
  d["blocks_per_warp"] = p.blocks_per_warp;
  d["reg_blocks"] = p.reg_blocks;
  d["smem_blocks"] = p.smem_blocks;
  d["stage_slots"] = p.stage_slots;
  d["mode"] = p.mode == kHalf ? "half" : p.mode == kTf32 ? "tf32" : "tf32x3";
  return d;
}

// The launch plan for a device with `num_sms` SMs and `smem_optin` bytes of shared memory per CTA:
// pure arithmetic (no GPU needed), the numbers bench/model_cuda.py and the limits tables use.
pybind11::dict launch_shape(const std::string& cell, bool backward, const std::string& dtype, bool tf32, int64_t H,
                            int64_t B, int64_t num_sms, int64_t smem_optin) {
  TORCH_CHECK(H >= 1 && B >= 0 && num_sms >= 1 && smem_optin >= 0, "fusedrnn cuda: launch_shape arguments out of range");
  const DType dt = dtype_from_name(dtype);
  const Plan p = make_plan(cell_named(cell), backward, dt, tf32 && dt == DType::F32, (int)H, (int)B, (int)num_sms,
                           (size_t)smem_optin);
  pybind11::dict d = plan_dict(p);
  d["fits"] = plan_fits(p, (int)num_sms, (size_t)smem_optin);
  return d;
}

// launch_shape on a device, plus what it allows: co-resident CTAs per SM at that shared memory, SMs,
// the opt-in shared-memory limit, cooperative-launch support (the emulator's device in that build).
pybind11::dict plan(const std::string& cell, bool backward, const std::string& dtype, bool tf32, int64_t H, int64_t B,
                    int64_t device) {
  const DType dt = dtype_from_name(dtype);
  const Cell c = cell_named(cell);
  DeviceIndexScope scope(device);
  const Plan p = device_plan(c, backward, dt, tf32 && dt == DType::F32, H, B);
  Occupancy occ;
  check_launch(occupancy(rnn_kernel(p, dt), p.bytes, &occ), "the occupancy query");
  pybind11::dict d = plan_dict(p);
  d["blocks_per_sm"] = occ.blocks_per_sm;
  d["num_sms"] = occ.num_sms;
  d["max_smem_optin"] = occ.max_smem_optin;
  d["cooperative"] = occ.cooperative;
  d["fits"] = occ.cooperative && occ.blocks_per_sm > 0 && p.grid <= occ.blocks_per_sm * occ.num_sms &&
              p.rows <= kMaxRows;
  return d;
}

#if !defined(FUSEDRNN_EMULATE)
double barrier_floor_ms(int64_t T, int64_t grid, bool ready_flags) {
  TORCH_CHECK(T >= 0, "fusedrnn cuda: barrier_floor: T must be >= 0, got ", T);
  const int device = (int)c10::cuda::current_device();
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  if (grid <= 0) grid = sms;
  TORCH_CHECK(grid <= sms, "fusedrnn cuda: barrier_floor: grid ", grid, " exceeds the ", sms,
              " SMs (one CTA per SM keeps every CTA co-resident)");
  const Tensor flags = ready_flags ? at::zeros({grid}, at::TensorOptions().device(at::kCUDA, device).dtype(at::kInt))
                                   : Tensor();
  float ms = 0.f;
  C10_CUDA_CHECK(barrier_floor((int)T, (int)grid, flags.defined() ? flags.data_ptr<int>() : nullptr,
                               c10::cuda::getCurrentCUDAStream(), &ms));
  return ms;
}
#endif  // !FUSEDRNN_EMULATE

}  // namespace

void register_rnn(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("gru_forward", &gru_forward, "persistent GRU recurrence forward -> (y, h_n, hist, saved)", py::arg("gx"),
        py::arg("h0"), py::arg("w_hh"), py::arg("b_hh"), py::arg("residual"), py::arg("lengths"), py::arg("reverse"),
        py::arg("save"), py::arg("allow_tf32"), py::arg("ready_flags") = false, py::arg("zo_p") = std::vector<double>{},
        py::arg("zo_seeds") = py::none());
  m.def("lstm_forward", &lstm_forward, "persistent LSTM recurrence forward -> (y, h_n, c_n, hist, saved)",
        py::arg("gx"), py::arg("h0"), py::arg("c0"), py::arg("w_hh"), py::arg("b_hh"), py::arg("residual"),
        py::arg("lengths"), py::arg("reverse"), py::arg("save"), py::arg("allow_tf32"), py::arg("ready_flags") = false, py::arg("zo_p") = std::vector<double>{},
        py::arg("zo_seeds") = py::none());
  m.def("gru_backward", &gru_backward, "persistent GRU recurrence backward -> (dgh, dgx_n, dh0)", py::arg("dy"),
        py::arg("dh_n"), py::arg("w_hh"), py::arg("hist"), py::arg("saved"), py::arg("lengths"), py::arg("reverse"),
        py::arg("allow_tf32"), py::arg("ready_flags") = false, py::arg("zo_p") = std::vector<double>{},
        py::arg("zo_seeds") = py::none());
  m.def("lstm_backward", &lstm_backward, "persistent LSTM recurrence backward -> (dgh, dh0, dc0)", py::arg("dy"),
        py::arg("dh_n"), py::arg("dc_n"), py::arg("w_hh"), py::arg("hist"), py::arg("saved"), py::arg("lengths"),
        py::arg("reverse"), py::arg("allow_tf32"), py::arg("ready_flags") = false, py::arg("zo_p") = std::vector<double>{},
        py::arg("zo_seeds") = py::none());
  m.def("elman_forward", &elman_forward,
        "persistent Elman RNN recurrence forward, cell 'rnn_tanh' or 'rnn_relu' -> (y, h_n, hist, saved)",
        py::arg("cell"), py::arg("gx"), py::arg("h0"), py::arg("w_hh"), py::arg("b_hh"), py::arg("residual"),
        py::arg("lengths"), py::arg("reverse"), py::arg("save"), py::arg("allow_tf32"), py::arg("ready_flags") = false, py::arg("zo_p") = std::vector<double>{},
        py::arg("zo_seeds") = py::none());
  m.def("elman_backward", &elman_backward, "persistent Elman RNN recurrence backward -> (dgh, dh0)",
        py::arg("cell"), py::arg("dy"), py::arg("dh_n"), py::arg("w_hh"), py::arg("hist"), py::arg("saved"),
        py::arg("lengths"), py::arg("reverse"), py::arg("allow_tf32"), py::arg("ready_flags") = false, py::arg("zo_p") = std::vector<double>{},
        py::arg("zo_seeds") = py::none());
  m.def("launch_shape", &launch_shape, "the launch plan for a device of num_sms SMs and smem_optin bytes (no GPU)",
        py::arg("cell"), py::arg("backward"), py::arg("dtype"), py::arg("tf32"), py::arg("H"), py::arg("B"),
        py::arg("num_sms"), py::arg("smem_optin"));
  m.def("plan", &plan, "the launch plan on a device plus its occupancy", py::arg("cell"), py::arg("backward"),
        py::arg("dtype"), py::arg("tf32"), py::arg("H"), py::arg("B"), py::arg("device"));
#if !defined(FUSEDRNN_EMULATE)
  m.def("barrier_floor", &barrier_floor_ms,
        "time (ms, CUDA events) of a persistent kernel doing T grid barriers (ready_flags: T rounds of the "
        "kernels' ready flags) and nothing else; grid <= 0: one CTA per SM",
        py::arg("T"), py::arg("grid") = 0, py::arg("ready_flags") = false);
#endif
}

}  // namespace fusedrnn
