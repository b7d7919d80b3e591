// Small kernels that show the emulator's checks work (tests/test_cuda_emu.py::test_emulator_*):
// each one is correct or breaks exactly one rule, and the test asserts that the emulator notices.
// Written in CUDA style like csrc/rnn_kernels.cuh, but compiled only into the emulator module.
#include <torch/extension.h>

#include <string>

#include "runtime.h"
#include "cuda_emu.h"

namespace fusedrnn_emu {
namespace {

namespace wmma = nvcuda::wmma;
namespace cg = cooperative_groups;

struct Args {
  const float* in;
  float* out;
  int n;
  int variant;
};

constexpr int kThreads = 256;

// Each thread writes its slot of shared memory, then reads its neighbour's. With the barrier the
// result is fixed; without it (variant 1) it depends on which thread ran first.
void neighbour_kernel(const void* p) {
  const Args& a = *static_cast<const Args*>(p);
  float* s = reinterpret_cast<float*>(dynamic_smem());
  const int t = threadIdx.x;
  s[t] = a.in[t];
  if (a.variant == 0) __syncthreads();
  a.out[t] = s[(t + 1) % kThreads];
}

// Thread 0 writes one float past the end of shared memory (variant 0: at the last valid slot).
void smem_oob_kernel(const void* p) {
  const Args& a = *static_cast<const Args*>(p);
  float* s = reinterpret_cast<float*>(dynamic_smem());
  if (threadIdx.x == 0) s[a.n - 1 + a.variant] = 1.f;
}

// Thread 0 writes one float past the end of a global buffer of n floats (variant 0: the last one).
void global_oob_kernel(const void* p) {
  const Args& a = *static_cast<const Args*>(p);
  if (threadIdx.x == 0) a.out[a.n - 1 + a.variant] = 1.f;
}

// Lanes of warp 0 call load_matrix_sync with different pointers (variant 1: lane 5 uses another row).
void warp_args_kernel(const void* p) {
  const Args& a = *static_cast<const Args*>(p);
  auto* s = reinterpret_cast<__half*>(dynamic_smem());
  for (int i = threadIdx.x; i < 512; i += kThreads) s[i] = __float2half_rn(a.in[i]);
  __syncthreads();
  if (threadIdx.x < 32) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    const int row = (a.variant == 1 && threadIdx.x == 5) ? 16 : 0;
    wmma::load_matrix_sync(fa, s + row * 16, 16);
    a.out[threadIdx.x] = __half2float(fa.x[0]);
  }
}

// Threads of one CTA meet at two different __syncthreads() calls (variant 1: even and odd threads).
void barrier_sites_kernel(const void* p) {
  const Args& a = *static_cast<const Args*>(p);
  if (a.variant == 1 && threadIdx.x % 2 == 1) {
    a.out[threadIdx.x] = 2.f;
    __syncthreads();
    a.out[threadIdx.x] += 1.f;
  } else {
    __syncthreads();
    a.out[threadIdx.x] = 1.f;
  }
}

// Half of the CTA leaves before a __syncthreads() that the other half waits at (variant 1).
void divergent_barrier_kernel(const void* p) {
  const Args& a = *static_cast<const Args*>(p);
  if (a.variant == 1 && threadIdx.x >= kThreads / 2) return;
  __syncthreads();
  a.out[blockIdx.x * kThreads + threadIdx.x] = 1.f;
}

// Every CTA but the last reaches grid.sync() (variant 1); variant 0: all do.
void grid_barrier_kernel(const void* p) {
  const Args& a = *static_cast<const Args*>(p);
  if (a.variant == 1 && (int)blockIdx.x == a.n - 1) return;
  cg::this_grid().sync();
  a.out[blockIdx.x * kThreads + threadIdx.x] = 1.f;
}

// One warp: D (16x16, row-major) = A (16x16 row-major, in[0:256]) * B (16x16, in[256:512], stored
// column-major: B[k][n] = in[256 + n*16 + k]) with fp16 operands. Variant 1: a misaligned pointer;
// variant 2: no __syncthreads() between filling shared memory and the warp's loads from it.
void wmma_kernel(const void* p) {
  const Args& a = *static_cast<const Args*>(p);
  auto* s = reinterpret_cast<__half*>(dynamic_smem());
  const int t = threadIdx.x;
  for (int i = t; i < 512; i += kThreads) s[i] = __float2half_rn(a.in[i]);
  if (a.variant != 2) __syncthreads();
  if (t < 32) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    wmma::fill_fragment(fc, 0.f);
    wmma::load_matrix_sync(fa, s + (a.variant == 1 ? 8 : 0), 16);
    wmma::load_matrix_sync(fb, s + 256, 16);
    wmma::mma_sync(fc, fa, fb, fc);
    wmma::store_matrix_sync(a.out, fc, 16, wmma::mem_row_major);
  }
}

}  // namespace

// Runs self-test `name` with `variant` on `in` (float32, contiguous); returns out.
torch::Tensor selftest(const std::string& name, int64_t variant, const torch::Tensor& in) {
  TORCH_CHECK(in.is_cpu() && in.scalar_type() == at::kFloat && in.is_contiguous(), "in: contiguous float32 CPU");
  Args a{in.data_ptr<float>(), nullptr, 0, (int)variant};
  void (*entry)(const void*) = nullptr;
  int grid = 1;
  size_t smem = 0;
  torch::Tensor out;
  clear_guards();
  if (name == "neighbour") {
    entry = neighbour_kernel, smem = kThreads * sizeof(float), out = torch::zeros({kThreads});
  } else if (name == "smem_oob") {
    entry = smem_oob_kernel, a.n = 64, smem = 64 * sizeof(float), out = torch::zeros({1});
  } else if (name == "global_oob") {  // 64 floats between guard zones, as rnn_ops.cpp allocates them
    torch::Tensor storage = torch::empty({64 + 2 * 64});
    storage.view(at::kByte).fill_(kGuardByte);
    add_guard(storage.data_ptr<float>(), 64 * sizeof(float), "selftest (before)");
    add_guard(storage.data_ptr<float>() + 128, 64 * sizeof(float), "selftest (after)");
    entry = global_oob_kernel, a.n = 64, out = storage.narrow(0, 64, 64);
  } else if (name == "warp_args") {
    entry = warp_args_kernel, smem = 512 * sizeof(__half), out = torch::zeros({32});
  } else if (name == "barrier_sites") {
    entry = barrier_sites_kernel, out = torch::zeros({kThreads});
  } else if (name == "divergent_barrier") {
    entry = divergent_barrier_kernel, grid = 2, out = torch::zeros({2 * kThreads});
  } else if (name == "grid_barrier") {
    entry = grid_barrier_kernel, grid = 3, a.n = 3, out = torch::zeros({3 * kThreads});
  } else if (name == "wmma") {
    entry = wmma_kernel, smem = 512 * sizeof(__half) + 64, out = torch::zeros({16, 16});
  } else {
    TORCH_CHECK(false, "unknown self-test ", name);
  }
  a.out = out.data_ptr<float>();
  TORCH_CHECK(launch(entry, &a, grid, kThreads, smem), "fusedrnn emulator: ", last_error());
  return out;
}

}  // namespace fusedrnn_emu
