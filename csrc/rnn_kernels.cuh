// Persistent cooperative GRU/LSTM recurrence kernels (one layer, one direction, whole sequence).
//
// Grid: ceil(H / kUnits) CTAs, all co-resident (cooperative launch). CTA j owns hidden units
// [16j, 16j+16) of every gate and keeps the matching W_hh slice in shared memory for all T steps.
// Forward step (one grid barrier each):
//   gates[b, g*16+u] = h_prev[b, :] · W_hh[g*H + 16j + u, :]   (tensor-core MMA, fp32 accumulate)
//   cell math in fp32 with fp32 state  ->  y[t], saved activations, h_t into hist[next t]
// Backward step (reverse time, one grid barrier each):
//   phase A (local): dgates of the CTA's units from dy[t], dh, dc and the saved activations -> dgh[t]
//   grid barrier: dgh[t] is complete
//   phase B: dh_prev[b, 16j+u] += dgh[t][b, :] · W_hh[:, 16j + u]   (same MMA routine, W_hhᵀ slice)
// Math follows fusedrnn/reference.py line by line; see csrc/README.md.
#pragma once

#if defined(FUSEDRNN_EMULATE)
// Host build for the CPU emulator (csrc/emu/): the same source, run by csrc/emu/runtime.cpp.
#include "emu/cuda_emu.h"
#define FUSEDRNN_KERNEL_BODY 1
#define FUSEDRNN_DYNAMIC_SMEM(name) unsigned char* name = ::fusedrnn_emu::dynamic_smem()
#else
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define FUSEDRNN_KERNEL_BODY 1
#else
#define FUSEDRNN_KERNEL_BODY 0
#endif
#define FUSEDRNN_DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#endif

#include "rnn_launch.h"

namespace fusedrnn {

namespace cg = cooperative_groups;
namespace wmma = nvcuda::wmma;

// ---------------------------------------------------------------------------------------------
// Scalar helpers
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Loads of data written by other CTAs during this kernel go through L2 only (ld.global.cg): the
// grid barrier orders the writes, but another SM's L1 could hold a stale line.
template <typename T> __device__ __forceinline__ T load_cg(const T* p) {
  if constexpr (sizeof(T) == 2) {
    unsigned short bits = __ldcg(reinterpret_cast<const unsigned short*>(p));
    return *reinterpret_cast<T*>(&bits);
  } else {
    return __ldcg(p);
  }
}

__device__ __forceinline__ float sigmoid_f(float x) { return 1.f / (1.f + expf(-x)); }
// c_t = f * c_{t-1} + i * g, written once so that forward and backward round identically.
__device__ __forceinline__ float lstm_c_new(float i, float f, float g, float c_prev) {
  return __fmaf_rn(f, c_prev, __fmul_rn(i, g));
}

// ---------------------------------------------------------------------------------------------
// Fragments of the two tensor-core modes
// ---------------------------------------------------------------------------------------------
template <typename T, int MODE> struct Frag;
template <typename T> struct Frag<T, kMmaHalf> {
  static constexpr int KT = 16;
  using A = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>;
  using B = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major>;
  using C = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
  __device__ static void round(A&, B&) {}
};
template <> struct Frag<float, kMmaTf32> {
  static constexpr int KT = 8;
  using A = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
  using B = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major>;
  using C = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;
  __device__ static void round(A& a, B& b) {
#pragma unroll
    for (int i = 0; i < a.num_elements; ++i) a.x[i] = wmma::__float_to_tf32(a.x[i]);
#pragma unroll
    for (int i = 0; i < b.num_elements; ++i) b.x[i] = wmma::__float_to_tf32(b.x[i]);
  }
};
template <> struct Frag<float, kFmaFp32> {
  static constexpr int KT = 16;
};

// ---------------------------------------------------------------------------------------------
// The recurrent product of one batch tile:
//   partial[ks][m][n] (summed over ks) = Σ_k A[m][k] · Bg[b0 + n][k],  m < MROWS, n < kBatchTile
// A: the CTA's weight slice in shared memory (MROWS x Kpad, zero beyond K).
// Bg: a (B, K) row-major scalar matrix in global memory written by other CTAs (h_prev or dgh[t]),
// staged kc columns at a time, zero-filled past K and past B.
// Warp w takes M tile (w % MT) and every KS-th K tile starting at (w / MT).
// Ends with __syncthreads(): partial is complete and readable by every thread.
// ---------------------------------------------------------------------------------------------
template <typename T, int MODE, int MROWS>
struct RecProduct {
  static constexpr int MT = MROWS / 16;
  static constexpr int KS = MODE == kFmaFp32 ? 1 : kWarps / MT;
  static constexpr int VEC = 16 / sizeof(T);          // elements per 16-byte load
  static constexpr int OUTS = MROWS * kBatchTile / kThreads;  // outputs per thread (FMA mode)
  static_assert(MROWS % 16 == 0 && MT <= kWarps, "M tiles must fit the warps");
  static_assert(MODE != kFmaFp32 || (MROWS * kBatchTile) % kThreads == 0, "FMA outputs per thread");

  __device__ static void stage_tile(T* stage, const SmemLayout& L, const T* Bg, int k0, int kc, int b0, int B,
                                    bool vec_ok) {
    const int tid = threadIdx.x;
    if (vec_ok) {
      const int vpr = kc / VEC;
      for (int i = tid; i < kBatchTile * vpr; i += kThreads) {
        const int n = i / vpr;
        const int kv = (i - n * vpr) * VEC;
        const int b = b0 + n, k = k0 + kv;
        int4 v = make_int4(0, 0, 0, 0);
        if (b < B && k < L.K) v = __ldcg(reinterpret_cast<const int4*>(Bg + (size_t)b * L.K + k));
        *reinterpret_cast<int4*>(stage + n * L.ldb + kv) = v;
      }
    } else {
      for (int i = tid; i < kBatchTile * kc; i += kThreads) {
        const int n = i / kc;
        const int kk = i - n * kc;
        const int b = b0 + n, k = k0 + kk;
        stage[n * L.ldb + kk] = (b < B && k < L.K) ? load_cg(Bg + (size_t)b * L.K + k) : from_f<T>(0.f);
      }
    }
  }

  __device__ static void run(const T* A, T* stage, float* partial, const SmemLayout& L, const T* Bg, int b0, int B,
                             bool vec_ok) {
    const int tid = threadIdx.x;
    if constexpr (MODE == kFmaFp32) {
      float acc[OUTS];
#pragma unroll
      for (int o = 0; o < OUTS; ++o) acc[o] = 0.f;
      for (int k0 = 0; k0 < L.Kpad; k0 += L.kc) {
        const int kc = min(L.kc, L.Kpad - k0);
        stage_tile(stage, L, Bg, k0, kc, b0, B, vec_ok);
        __syncthreads();
#pragma unroll
        for (int o = 0; o < OUTS; ++o) {
          const int idx = tid + o * kThreads;
          const T* a = A + (idx / kBatchTile) * L.lda + k0;
          const T* bv = stage + (idx % kBatchTile) * L.ldb;
          float s = acc[o];
#pragma unroll 8
          for (int k = 0; k < kc; ++k) s = fmaf(a[k], bv[k], s);
          acc[o] = s;
        }
        __syncthreads();
      }
#pragma unroll
      for (int o = 0; o < OUTS; ++o) partial[tid + o * kThreads] = acc[o];  // [m][n], m = idx / 16
    } else {
      using F = Frag<T, MODE>;
      const int warp = tid >> 5;
      const bool has_tile = warp < MT * KS;
      const int mt = warp % MT, ks = warp / MT;
      typename F::C acc;
      wmma::fill_fragment(acc, 0.f);
      for (int k0 = 0; k0 < L.Kpad; k0 += L.kc) {
        const int kc = min(L.kc, L.Kpad - k0);
        stage_tile(stage, L, Bg, k0, kc, b0, B, vec_ok);
        __syncthreads();
        if (has_tile) {
          for (int kt = ks * F::KT; kt < kc; kt += KS * F::KT) {
            typename F::A a;
            typename F::B b;
            wmma::load_matrix_sync(a, A + mt * 16 * L.lda + k0 + kt, L.lda);
            wmma::load_matrix_sync(b, stage + kt, L.ldb);
            F::round(a, b);
            wmma::mma_sync(acc, a, b, acc);
          }
        }
        __syncthreads();
      }
      if (has_tile) wmma::store_matrix_sync(partial + (ks * MROWS + mt * 16) * kBatchTile, acc, kBatchTile,
                                            wmma::mem_row_major);
    }
    __syncthreads();
  }

  // Σ over the K splits of output (m, n).
  __device__ static float sum(const float* partial, int m, int n) {
    float s = 0.f;
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) s += partial[(ks * MROWS + m) * kBatchTile + n];
    return s;
  }
};

template <typename T, int MODE>
__device__ __forceinline__ bool vec_loads_ok(const void* base, int K) {
  return (K % (16 / (int)sizeof(T)) == 0) && ((reinterpret_cast<uintptr_t>(base) & 15) == 0);
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------
template <int CELL, typename T, int MODE>
__global__ void __launch_bounds__(kThreads, 1) rnn_fwd_persistent_kernel(const FwdParams p) {
#if FUSEDRNN_KERNEL_BODY
  constexpr int NG = CELL == 0 ? 3 : 4;
  constexpr int NS = CELL == 0 ? 4 : 5;
  constexpr int MROWS = NG * kUnits;
  using R = RecProduct<T, MODE, MROWS>;

  FUSEDRNN_DYNAMIC_SMEM(smem);
  const SmemLayout L = make_layout(MROWS, p.H, sizeof(T), MODE);
  T* A = reinterpret_cast<T*>(smem + L.a_off);
  T* stage = reinterpret_cast<T*>(smem + L.stage_off);
  float* partial = reinterpret_cast<float*>(smem + L.partial_off);

  const int H = p.H, B = p.B, steps = p.T, G = NG * H;
  const int tid = threadIdx.x, u = tid % kUnits, n = tid / kUnits;
  const int j0 = blockIdx.x * kUnits, j = j0 + u;
  const T* w_hh = static_cast<const T*>(p.w_hh);
  const T* gx = static_cast<const T*>(p.gx);
  const T* residual = static_cast<const T*>(p.residual);
  T* y = static_cast<T*>(p.y);
  T* hist = static_cast<T*>(p.hist);

  // W_hh rows of every gate of this CTA's units; row r = g*16 + uu  <->  W_hh row g*H + j0 + uu.
  for (int i = tid; i < MROWS * L.Kpad; i += kThreads) {
    const int r = i / L.Kpad, k = i - r * L.Kpad;
    const int jj = j0 + r % kUnits;
    A[r * L.lda + k] = (jj < H && k < H) ? w_hh[(size_t)((r / kUnits) * H + jj) * H + k] : from_f<T>(0.f);
  }
  float bias[NG];
#pragma unroll
  for (int g = 0; g < NG; ++g) bias[g] = (p.b_hh != nullptr && j < H) ? to_f(static_cast<const T*>(p.b_hh)[g * H + j]) : 0.f;
  const bool vec_ok = vec_loads_ok<T, MODE>(hist, H);
  __syncthreads();

  cg::grid_group grid = cg::this_grid();
  for (int s = 0; s < steps; ++s) {
    const int t = p.reverse ? steps - 1 - s : s;
    const int t_next = p.reverse ? t - 1 : t + 1;
    const bool last = s + 1 == steps;
    for (int b0 = 0; b0 < B; b0 += kBatchTile) {
      R::run(A, stage, partial, L, hist + (size_t)t * B * H, b0, B, vec_ok);
      const int b = b0 + n;
      if (j >= H || b >= B) continue;
      float gh[NG];
#pragma unroll
      for (int g = 0; g < NG; ++g) gh[g] = R::sum(partial, g * kUnits + u, n) + bias[g];
      const size_t row = (size_t)t * B + b;  // (t, b)
      const T* gx_row = gx + row * G;
      const size_t bj = (size_t)b * H + j;
      const bool valid = p.lengths == nullptr || t < p.lengths[b];
      const float h_prev = p.h_state[bj];
      float h_new = h_prev;
      float* sv = p.saved != nullptr ? p.saved + row * (NS * H) : nullptr;
      if (!valid && sv) {  // nothing to save past a row's length: zeros, so the op's output is defined
#pragma unroll
        for (int g = 0; g < NS; ++g) sv[g * H + j] = 0.f;
      }
      if (valid) {
        if constexpr (CELL == 0) {
          // r = σ(gx_r + gh_r), z = σ(gx_z + gh_z), n = tanh(gx_n + r * gh_n), h = (1-z) n + z h_prev
          const float r = sigmoid_f(to_f(gx_row[j]) + gh[0]);
          const float z = sigmoid_f(to_f(gx_row[H + j]) + gh[1]);
          const float nn = tanhf(to_f(gx_row[2 * H + j]) + r * gh[2]);
          h_new = (1.f - z) * nn + z * h_prev;
          if (sv) {
            sv[j] = r;
            sv[H + j] = z;
            sv[2 * H + j] = nn;
            sv[3 * H + j] = gh[2];
          }
        } else {
          const float ig = sigmoid_f(to_f(gx_row[j]) + gh[0]);
          const float fg = sigmoid_f(to_f(gx_row[H + j]) + gh[1]);
          const float gg = tanhf(to_f(gx_row[2 * H + j]) + gh[2]);
          const float og = sigmoid_f(to_f(gx_row[3 * H + j]) + gh[3]);
          const float c_prev = p.c_state[bj];
          const float c_new = lstm_c_new(ig, fg, gg, c_prev);
          h_new = og * tanhf(c_new);
          p.c_state[bj] = c_new;
          if (sv) {
            sv[j] = ig;
            sv[H + j] = fg;
            sv[2 * H + j] = gg;
            sv[3 * H + j] = og;
            sv[4 * H + j] = c_prev;
          }
        }
        p.h_state[bj] = h_new;
      }
      float y_val = 0.f;
      if (valid) y_val = residual != nullptr ? h_new + to_f(residual[row * H + j]) : h_new;
      y[row * H + j] = from_f<T>(y_val);
      if (!last) hist[((size_t)t_next * B + b) * H + j] = from_f<T>(h_new);
    }
    if (!last) grid.sync();
  }
#else
  __trap();  // built for an arch below sm_80: the host side never launches this
#endif
}

// ---------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------
template <int CELL, typename T, int MODE>
__global__ void __launch_bounds__(kThreads, 1) rnn_bwd_persistent_kernel(const BwdParams p) {
#if FUSEDRNN_KERNEL_BODY
  constexpr int NG = CELL == 0 ? 3 : 4;
  constexpr int NS = CELL == 0 ? 4 : 5;
  using R = RecProduct<T, MODE, kUnits>;

  FUSEDRNN_DYNAMIC_SMEM(smem);
  const int H = p.H, B = p.B, steps = p.T, G = NG * H;
  const SmemLayout L = make_layout(kUnits, G, sizeof(T), MODE);
  T* A = reinterpret_cast<T*>(smem + L.a_off);
  T* stage = reinterpret_cast<T*>(smem + L.stage_off);
  float* partial = reinterpret_cast<float*>(smem + L.partial_off);

  const int tid = threadIdx.x, u = tid % kUnits, n = tid / kUnits;
  const int j0 = blockIdx.x * kUnits, j = j0 + u;
  const T* w_hh = static_cast<const T*>(p.w_hh);
  const T* dy = static_cast<const T*>(p.dy);
  const T* hist = static_cast<const T*>(p.hist);
  T* dgh = static_cast<T*>(p.dgh);
  T* dgx_n = static_cast<T*>(p.dgx_n);

  // A[uu][k] = W_hh[k, j0 + uu]: the CTA's columns of W_hh, transposed (16 x G).
  for (int i = tid; i < kUnits * L.Kpad; i += kThreads) {
    const int k = i / kUnits, uu = i % kUnits;
    const int jj = j0 + uu;
    A[uu * L.lda + k] = (jj < H && k < G) ? w_hh[(size_t)k * H + jj] : from_f<T>(0.f);
  }
  const bool vec_ok = vec_loads_ok<T, MODE>(dgh, G);
  __syncthreads();

  cg::grid_group grid = cg::this_grid();
  for (int s = steps - 1; s >= 0; --s) {  // forward step index, walked backwards
    const int t = p.reverse ? steps - 1 - s : s;
    // Phase A: dgates of this CTA's units for every batch row (dh, dc carried in fp32 buffers).
    for (int b0 = 0; b0 < B; b0 += kBatchTile) {
      const int b = b0 + n;
      if (j >= H || b >= B) continue;
      const size_t row = (size_t)t * B + b;
      const size_t bj = (size_t)b * H + j;
      T* dg = dgh + row * G;
      const bool valid = p.lengths == nullptr || t < p.lengths[b];
      if (!valid) {  // state carried: dh, dc pass through unchanged; no gate gradient
#pragma unroll
        for (int g = 0; g < NG; ++g) dg[g * H + j] = from_f<T>(0.f);
        if constexpr (CELL == 0) dgx_n[row * H + j] = from_f<T>(0.f);
        continue;
      }
      const float* sv = p.saved + row * (NS * H);
      const float dh = p.dh[bj] + to_f(dy[row * H + j]);
      if constexpr (CELL == 0) {
        const float r = sv[j], z = sv[H + j], nn = sv[2 * H + j], gh_n = sv[3 * H + j];
        const float h_prev = to_f(hist[row * H + j]);
        const float dn = dh * (1.f - z) * (1.f - nn * nn);  // d(pre-tanh of n)
        const float dz = dh * (h_prev - nn) * z * (1.f - z);
        const float dr = dn * gh_n * r * (1.f - r);
        dg[j] = from_f<T>(dr);
        dg[H + j] = from_f<T>(dz);
        dg[2 * H + j] = from_f<T>(dn * r);  // gh_n enters as r * gh_n
        dgx_n[row * H + j] = from_f<T>(dn);
        p.dh[bj] = dh * z;  // direct path; phase B adds dgh · W_hh
      } else {
        const float ig = sv[j], fg = sv[H + j], gg = sv[2 * H + j], og = sv[3 * H + j], c_prev = sv[4 * H + j];
        const float tc = tanhf(lstm_c_new(ig, fg, gg, c_prev));
        const float dc = p.dc[bj] + dh * og * (1.f - tc * tc);
        dg[j] = from_f<T>(dc * gg * ig * (1.f - ig));
        dg[H + j] = from_f<T>(dc * c_prev * fg * (1.f - fg));
        dg[2 * H + j] = from_f<T>(dc * ig * (1.f - gg * gg));
        dg[3 * H + j] = from_f<T>(dh * tc * og * (1.f - og));
        p.dc[bj] = dc * fg;
        p.dh[bj] = 0.f;  // h_prev reaches h only through the gates
      }
    }
    grid.sync();  // dgh[t] complete for every unit
    // Phase B: dh_prev[b, j] += Σ_k dgh[t][b, k] · W_hh[k, j].
    const T* dg_t = dgh + (size_t)t * B * G;
    for (int b0 = 0; b0 < B; b0 += kBatchTile) {
      R::run(A, stage, partial, L, dg_t, b0, B, vec_ok);
      const int b = b0 + n;
      if (j < H && b < B) p.dh[(size_t)b * H + j] += R::sum(partial, u, n);
    }
    // No barrier here: the next phase A touches only this CTA's units and writes another dgh slot.
  }
#else
  __trap();
#endif
}

#if defined(FUSEDRNN_EMULATE)
// The emulator runs a kernel through one signature: entry(&params).
template <int CELL, bool BWD, typename T, int MODE>
void emu_entry(const void* params) {
  if constexpr (BWD) {
    rnn_bwd_persistent_kernel<CELL, T, MODE>(*static_cast<const BwdParams*>(params));
  } else {
    rnn_fwd_persistent_kernel<CELL, T, MODE>(*static_cast<const FwdParams*>(params));
  }
}
#endif

template <int CELL, bool BWD, typename T, int MODE>
const void* kernel_ptr() {
#if defined(FUSEDRNN_EMULATE)
  return reinterpret_cast<const void*>(&emu_entry<CELL, BWD, T, MODE>);
#endif
  if constexpr (BWD) {
    return reinterpret_cast<const void*>(&rnn_bwd_persistent_kernel<CELL, T, MODE>);
  } else {
    return reinterpret_cast<const void*>(&rnn_fwd_persistent_kernel<CELL, T, MODE>);
  }
}

template <int CELL, bool BWD>
const void* select_kernel(DType d, bool tf32) {
  switch (d) {
    case DType::F16: return kernel_ptr<CELL, BWD, __half, kMmaHalf>();
    case DType::BF16: return kernel_ptr<CELL, BWD, __nv_bfloat16, kMmaHalf>();
    case DType::F32:
      return tf32 ? kernel_ptr<CELL, BWD, float, kMmaTf32>() : kernel_ptr<CELL, BWD, float, kFmaFp32>();
  }
  return nullptr;
}

}  // namespace fusedrnn
