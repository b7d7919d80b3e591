// Small kernels that show the emulator's checks work (tests/test_cuda_emulator.py):
// each one is correct or breaks exactly one rule, and the test asserts that the emulator notices.
// Written in CUDA style like csrc/rnn_kernels.cuh, but compiled only into the emulator module.
#include <torch/extension.h>

#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

#include "runtime.h"
#include "cuda_emu.h"
#include "../ptx.cuh"

namespace fusedrnn_emu {
namespace {

namespace cg = cooperative_groups;

struct Args {
  const float* in;
  float* out;
  int n;
  int variant;
  float* data = nullptr;  // ready_flags: the exchanged slots
  int* flags = nullptr;   // ready_flags: one per CTA
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


// One warp computes D (16x8) = A·B with mma.sync, the fragments packed from `in` by the PTX ISA's
// layout: A = in[0:256] as 16x16 (16-bit; tf32: in[0:128] as 16x8), B = in[256:384] as 16x8 (tf32:
// in[256:320] as 8x8), both row-major; a.n selects 0 f16, 1 bf16, 2 tf32. Variant 1 packs B with
// its row and column swapped (a layout bug); variant 2: lane 7 skips the mma; variant 3: lane 5
// calls the bf16 shape while the others call f16 (lanes disagreeing on the operation).
template <typename T> uint32_t pack2(float lo, float hi) {  // lo in the low half, as the ISA packs pairs
  T pair[2];
  if constexpr (std::is_same<T, __half>::value) {
    pair[0] = __float2half_rn(lo), pair[1] = __float2half_rn(hi);
  } else {
    pair[0] = __float2bfloat16_rn(lo), pair[1] = __float2bfloat16_rn(hi);
  }
  uint32_t word;
  std::memcpy(&word, pair, 4);
  return word;
}

template <typename T>
void mma_warp(const Args& a) {
  const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
  const float* A = a.in;
  const float* B = a.in + 256;
  uint32_t ar[4], br[2];
  if constexpr (std::is_same<T, float>::value) {  // A 16x8, B 8x8
    for (int i = 0; i < 4; ++i) ar[i] = fusedrnn::tf32_rna(A[(g + 8 * (i & 1)) * 8 + t + 4 * (i >> 1)]);
    for (int i = 0; i < 2; ++i) {
      const int k = t + 4 * i, n = g;
      br[i] = fusedrnn::tf32_rna(a.variant == 1 ? B[n * 8 + k] : B[k * 8 + n]);
    }
  } else {  // A 16x16, B 16x8
    for (int i = 0; i < 4; ++i) {
      const int row = g + 8 * (i & 1), col = 2 * t + 8 * (i >> 1);
      ar[i] = pack2<T>(A[row * 16 + col], A[row * 16 + col + 1]);
    }
    for (int i = 0; i < 2; ++i) {
      const int k = 2 * t + 8 * i, n = g;
      br[i] = a.variant == 1 ? pack2<T>(B[n * 16 + k % 8], B[n * 16 + k % 8 + 1])
                             : pack2<T>(B[k * 8 + n], B[(k + 1) * 8 + n]);
    }
  }
  float d[4] = {0.f, 0.f, 0.f, 0.f};
  if (a.variant == 3 && lane == 5) {
    fusedrnn::Mma<__nv_bfloat16>::run(d, ar[0], ar[1], ar[2], ar[3], br[0], br[1]);
  } else if (!(a.variant == 2 && lane == 7)) {
    fusedrnn::Mma<T>::run(d, ar[0], ar[1], ar[2], ar[3], br[0], br[1]);
  }
  for (int i = 0; i < 4; ++i) a.out[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = d[i];
}

void mma_kernel(const void* p) {
  const Args& a = *static_cast<const Args*>(p);
  if (threadIdx.x >= 32) return;
  if (a.n == 0) mma_warp<__half>(a);
  if (a.n == 1) mma_warp<__nv_bfloat16>(a);
  if (a.n == 2) mma_warp<float>(a);
}

// Every thread cp.asyncs in[4t .. 4t+3] into shared slot t (group 0) and in[1024 + 4t ..] into
// slot 256 + t (group 1), then out[4t ..] = its neighbour's slot t+1 and out[1024 + 4t ..] = its own
// slot 256 + t. Variant 0 waits for both groups and syncs first; the others break one rule:
//   1 reads its own slot 256 + t before any wait (then waits for everything)
//   2 waits for group 0 only (wait_group 1) and reads slot 256 + t
//   3 waits but skips the __syncthreads() before reading the neighbour's slot
//   4 writes its source after issuing the copy
//   5 never waits
void cp_async_kernel(const void* p) {
  const Args& a = *static_cast<const Args*>(p);
  float* s = reinterpret_cast<float*>(dynamic_smem());
  const int t = threadIdx.x;
  fusedrnn::cp_async_16(s + 4 * t, a.in + 4 * t, true);
  fusedrnn::cp_async_commit();
  fusedrnn::cp_async_16(s + 1024 + 4 * t, a.in + 1024 + 4 * t, true);
  fusedrnn::cp_async_commit();
  if (a.variant == 1) {
    for (int i = 0; i < 4; ++i) a.out[1024 + 4 * t + i] = s[1024 + 4 * t + i];
    fusedrnn::cp_async_wait<0>();
    return;
  }
  if (a.variant == 4) const_cast<float*>(a.in)[4 * t] += 1.f;
  if (a.variant == 5) return;
  if (a.variant == 2) {
    fusedrnn::cp_async_wait<1>();
    for (int i = 0; i < 4; ++i) a.out[1024 + 4 * t + i] = s[1024 + 4 * t + i];
    fusedrnn::cp_async_wait<0>();
    return;
  }
  fusedrnn::cp_async_wait<0>();
  if (a.variant != 3) __syncthreads();
  const int nb = (t + 1) % kThreads;
  for (int i = 0; i < 4; ++i) {
    a.out[4 * t + i] = s[4 * nb + i];
    a.out[1024 + 4 * t + i] = s[1024 + 4 * t + i];
  }
}

// kFlagCtas CTAs exchange data for a.n steps: at step s every thread writes its element of the CTA's
// slot s (an exchange store), the CTA publishes it, and every thread then reads element t + 1 of its
// neighbour CTA's slot s (__ldcg) into out. How the reader is ordered after the writes:
//   0 wait_ready on the neighbour's flag (warp 0: relaxed polls, fence;      ok
//     then __syncthreads())
//   1 polls the flag with relaxed loads and no fence                         read not ordered
//   2 does not wait                                                          read not ordered
//   3 thread 0 publishes before the __syncthreads() that orders the others'  read not ordered
//   4 waits for its own flag instead of the neighbour's                      read not ordered
//   5 nobody publishes                                                       deadlock
//   6 relaxed polls, then fence.acq_rel (the acquire pattern)                ok
//   7 lane 0 of each warp acquires, the other lanes read without __syncwarp  read not ordered
//   8 thread 0 acquires, then __syncthreads()                                ok
//   9 grid.sync() instead of flags                                           ok
//  10 barrier_arrive(), barrier_wait()                                       ok
//  11 barrier_arrive(), the store, barrier_wait()                            read not ordered
//  12 the CTAs' flags at kFlagBase + X, after kFlagBase flags the host set;
//     wait_ready on all kFlagBase + kFlagCtas of them (a second poll round)   ok
//  13 as 12, but wait_ready on the first kFlagBase only                       read not ordered
//  14 wait_ready's warp-0 polls and fence, no __syncthreads() after them      read not ordered
//  15 wait_ready's warp-0 relaxed polls and __syncthreads(), no fence         read not ordered
constexpr int kFlagCtas = 4;
constexpr int kFlagBase = 128;  // wait_ready polls 128 flags per round (32 lanes x 4)
void visibility_kernel(const void* p) {
  const Args& a = *static_cast<const Args*>(p);
  const int X = blockIdx.x, t = threadIdx.x, Y = (X + 1) % kFlagCtas, v = a.variant;
  if (v == 12 || v == 13) {  // many flags: the neighbour's is polled in wait_ready's second round
    for (int s = 0; s < a.n; ++s) {
      fusedrnn::exchange_store(a.data + ((size_t)s * kFlagCtas + X) * kThreads + t, (float)(1000 * s + 100 * X + t));
      __syncthreads();
      fusedrnn::publish_ready(a.flags + kFlagBase + X, s + 1);
      fusedrnn::wait_ready(a.flags, v == 12 ? kFlagBase + kFlagCtas : kFlagBase, s + 1);
      const float* theirs = a.data + ((size_t)s * kFlagCtas + Y) * kThreads;
      a.out[((size_t)s * kFlagCtas + X) * kThreads + t] = __ldcg(theirs + (t + 1) % kThreads);
    }
    return;
  }
  for (int s = 0; s < a.n; ++s) {
    float* mine = a.data + ((size_t)s * kFlagCtas + X) * kThreads;
    const float value = (float)(1000 * s + 100 * X + t);
    if (v == 10 || v == 11) {
      if (v == 10) fusedrnn::exchange_store(mine + t, value);
      auto token = cg::this_grid().barrier_arrive();
      if (v == 11) fusedrnn::exchange_store(mine + t, value);
      cg::this_grid().barrier_wait(std::move(token));
    } else {
      fusedrnn::exchange_store(mine + t, value);
    }
    if (v == 10 || v == 11) {
    } else if (v == 3) {
      if (t == 0) fusedrnn::flag_release(a.flags + X, s + 1);
      __syncthreads();
    } else if (v == 9) {
      cg::this_grid().sync();
    } else {
      __syncthreads();
      if (v != 5) fusedrnn::publish_ready(a.flags + X, s + 1);
    }
    const int* flag = a.flags + (v == 4 ? X : Y);
    if (v == 1) {
      while (flag_load(flag, false) < s + 1) {
      }
    } else if (v == 6) {
      while (flag_load(flag, false) < s + 1) {
      }
      fence_acq_rel();
    } else if (v == 7) {
      if (t % 32 == 0)
        while (fusedrnn::flag_acquire(flag) < s + 1) {
        }
    } else if (v == 8) {
      if (t == 0)
        while (fusedrnn::flag_acquire(flag) < s + 1) {
        }
      __syncthreads();
    } else if (v == 14 || v == 15) {
      if (t < 32) {
        while (fusedrnn::flag_relaxed(flag) < s + 1) {
        }
        if (v == 14) fusedrnn::fence_acquire();
      }
      if (v == 15) __syncthreads();
    } else if (v != 2 && v < 9) {
      fusedrnn::wait_ready(flag, 1, s + 1);
    }
    const float* theirs = a.data + ((size_t)s * kFlagCtas + Y) * kThreads;
    a.out[((size_t)s * kFlagCtas + X) * kThreads + t] = __ldcg(theirs + (t + 1) % kThreads);
  }
}

// out[4i .. 4i+3] = ex2.approx(x), rcp.approx(x), sigmoid from ex2 + rcp (what the kernels use),
// sigmoid as 0.5 + 0.5 tanh.approx(x / 2) (a tempting shortcut that is too inaccurate for fp32).
void fast_math_kernel(const void* p) {
  const Args& a = *static_cast<const Args*>(p);
  for (int i = threadIdx.x; i < a.n; i += kThreads) {
    const float x = a.in[i];
    a.out[4 * i] = fusedrnn::ex2_approx(x);
    a.out[4 * i + 1] = fusedrnn::rcp_approx(x);
    a.out[4 * i + 2] = fusedrnn::sigmoid_fast(x);
    a.out[4 * i + 3] = 0.5f + 0.5f * fusedrnn::tanh_approx(0.5f * x);
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
  torch::Tensor out, storage, flags;
  clear_guards();
  if (name == "neighbour") {
    entry = neighbour_kernel, smem = kThreads * sizeof(float), out = torch::zeros({kThreads});
  } else if (name == "smem_oob") {
    entry = smem_oob_kernel, a.n = 64, smem = 64 * sizeof(float), out = torch::zeros({1});
  } else if (name == "global_oob") {  // 64 floats between guard zones, as rnn_ops.cpp allocates them
    storage = torch::empty({64 + 2 * 64});
    storage.view(at::kByte).fill_(kGuardByte);
    add_guard(storage.data_ptr<float>(), 64 * sizeof(float), "selftest (before)");
    add_guard(storage.data_ptr<float>() + 128, 64 * sizeof(float), "selftest (after)");
    entry = global_oob_kernel, a.n = 64, out = storage.narrow(0, 64, 64);
  } else if (name == "barrier_sites") {
    entry = barrier_sites_kernel, out = torch::zeros({kThreads});
  } else if (name == "divergent_barrier") {
    entry = divergent_barrier_kernel, grid = 2, out = torch::zeros({2 * kThreads});
  } else if (name == "grid_barrier") {
    entry = grid_barrier_kernel, grid = 3, a.n = 3, out = torch::zeros({3 * kThreads});
  } else if (name == "mma_f16" || name == "mma_bf16" || name == "mma_tf32") {
    a.n = name == "mma_f16" ? 0 : name == "mma_bf16" ? 1 : 2;
    TORCH_CHECK(in.numel() >= 384, "mma self-test: 384 inputs");
    entry = mma_kernel, out = torch::zeros({16, 8});
  } else if (name == "cp_async") {
    TORCH_CHECK(in.numel() >= 2048, "cp_async self-test: 2048 inputs");
    entry = cp_async_kernel, smem = 2048 * sizeof(float), out = torch::zeros({2048});
  } else if (name == "visibility") {
    a.n = 3;
    storage = torch::zeros({a.n * kFlagCtas * kThreads});
    flags = torch::zeros({kFlagBase + kFlagCtas}, torch::kInt);
    if (variant == 12 || variant == 13) flags.slice(0, 0, kFlagBase).fill_(a.n);  // released before the launch
    a.data = storage.data_ptr<float>(), a.flags = flags.data_ptr<int>();
    entry = visibility_kernel, grid = kFlagCtas, out = torch::zeros({a.n, kFlagCtas, kThreads});
  } else if (name == "fast_math") {
    entry = fast_math_kernel, a.n = (int)in.numel(), out = torch::zeros({in.numel(), 4});
  } else {
    TORCH_CHECK(false, "unknown self-test ", name);
  }
  a.out = out.data_ptr<float>();
  TORCH_CHECK(launch(entry, &a, grid, kThreads, smem), "fusedrnn emulator: ", last_error());
  return out;
}

// Zoneout's random numbers as the kernels compute them (csrc/ptx.cuh philox_word0, philox_uniform,
// in this build with 64-bit products for mul.hi): for each (seed, offset) pair, Philox 4x32-10's first
// word and the float32 uniform, for tests/test_zoneout.py to compare with fusedrnn.zoneout.uniform.
std::vector<torch::Tensor> philox(const torch::Tensor& seeds, const torch::Tensor& offsets) {
  TORCH_CHECK(seeds.is_cpu() && offsets.is_cpu() && seeds.scalar_type() == at::kLong &&
                  offsets.scalar_type() == at::kLong && seeds.sizes() == offsets.sizes(),
              "philox: seeds and offsets: int64 CPU tensors of one shape");
  const torch::Tensor s = seeds.contiguous(), o = offsets.contiguous();
  torch::Tensor word = torch::empty_like(s), u = torch::empty(s.sizes(), s.options().dtype(at::kFloat));
  const int64_t* sp = s.data_ptr<int64_t>();
  const int64_t* op = o.data_ptr<int64_t>();
  for (int64_t i = 0; i < s.numel(); ++i) {
    word.data_ptr<int64_t>()[i] = (int64_t)fusedrnn::philox_word0((uint64_t)sp[i], (uint64_t)op[i]);
    u.data_ptr<float>()[i] = fusedrnn::philox_uniform((uint64_t)sp[i], (uint64_t)op[i]);
  }
  return {word, u};
}

}  // namespace fusedrnn_emu
