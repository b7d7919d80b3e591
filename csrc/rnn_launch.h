// Host-side interface of the persistent GRU/LSTM recurrence kernels: parameter structs, the
// shared-memory layout (used by host and device alike) and the launch entry points.
// No torch headers here: the kernels (*.cu) build and report registers/spills without torch
// (tests/test_cuda_build.py), and csrc/rnn_ops.cpp is the torch-facing glue.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define FUSEDRNN_HD __host__ __device__
#else
#define FUSEDRNN_HD
#endif

namespace fusedrnn {

enum class Cell : int { GRU = 0, LSTM = 1 };
enum class DType : int { F16 = 0, BF16 = 1, F32 = 2 };
// How the recurrent product h_prev · W_hhᵀ is computed.
enum MathMode : int {
  kMmaHalf = 0,  // fp16/bf16 tensor-core MMA (wmma 16x16x16), fp32 accumulation
  kMmaTf32 = 1,  // fp32 inputs rounded to TF32 for tensor-core MMA (16x16x8), fp32 accumulation
  kFmaFp32 = 2,  // exact fp32 FMA (fp32 inputs when TF32 is not allowed)
};

constexpr int kUnits = 16;      // hidden units owned by one CTA (all gates of them)
constexpr int kBatchTile = 16;  // batch rows per MMA tile
constexpr int kThreads = 256;   // = kUnits * kBatchTile: one (unit, batch row) per thread
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 512;     // K elements of the MMA's right operand staged in shared memory at once

static_assert(kThreads == kUnits * kBatchTile, "elementwise phase maps one thread per (unit, row)");

FUSEDRNN_HD inline int n_gates(int cell) { return cell == 0 ? 3 : 4; }
// fp32 values saved per (t, b, unit) for the backward: GRU r,z,n,(W_hn h+b_hn); LSTM i,f,g,o,c_prev.
FUSEDRNN_HD inline int n_saved(int cell) { return cell == 0 ? 4 : 5; }
FUSEDRNN_HD inline int round_up(int x, int m) { return (x + m - 1) / m * m; }
FUSEDRNN_HD inline size_t round_up_sz(size_t x, size_t m) { return (x + m - 1) / m * m; }

// Shared memory of one CTA: A = the on-chip W_hh slice (mrows x K, row stride lda), the staged
// right operand (kBatchTile rows x kc, row stride ldb), and fp32 partial products of the K-split
// warps (ks x mrows x kBatchTile). Rows are padded by 16 bytes against bank conflicts.
struct SmemLayout {
  int mrows, K, Kpad, lda, kc, ldb, ks;
  size_t a_off, stage_off, partial_off, bytes;
};

FUSEDRNN_HD inline int k_splits(int mode, int mrows) {
  return mode == kFmaFp32 ? 1 : kWarps / (mrows / 16);
}

FUSEDRNN_HD inline SmemLayout make_layout(int mrows, int K, int elem_bytes, int mode) {
  SmemLayout L;
  L.mrows = mrows;
  L.K = K;
  L.Kpad = round_up(K, 16);
  const int pad = 16 / elem_bytes;
  L.lda = L.Kpad + pad;
  L.kc = L.Kpad < kChunk ? L.Kpad : kChunk;
  L.ldb = L.kc + pad;
  L.ks = k_splits(mode, mrows);
  L.a_off = 0;
  L.stage_off = round_up_sz((size_t)mrows * L.lda * elem_bytes, 128);
  L.partial_off = round_up_sz(L.stage_off + (size_t)kBatchTile * L.ldb * elem_bytes, 128);
  L.bytes = L.partial_off + (size_t)L.ks * mrows * kBatchTile * sizeof(float);
  return L;
}

inline int math_mode(DType d, bool tf32) { return d == DType::F32 ? (tf32 ? kMmaTf32 : kFmaFp32) : kMmaHalf; }
inline int elem_bytes(DType d) { return d == DType::F32 ? 4 : 2; }

// Forward: W_hh rows of all gates of the CTA's units (n_gates*16 x H).
// Backward: W_hh columns of the CTA's units, transposed (16 x n_gates*H).
inline SmemLayout layout_for(Cell cell, bool backward, DType d, bool tf32, int H) {
  const int ng = n_gates((int)cell);
  return backward ? make_layout(kUnits, ng * H, elem_bytes(d), math_mode(d, tf32))
                  : make_layout(ng * kUnits, H, elem_bytes(d), math_mode(d, tf32));
}
inline int grid_for(int H) { return (H + kUnits - 1) / kUnits; }

// Pointers are to contiguous tensors; "scalar" means the input dtype (fp16, bf16 or fp32).
struct FwdParams {
  int T, B, H;
  bool reverse;
  const void* gx;          // (T, B, G) scalar: x·W_ihᵀ + b_ih
  const void* w_hh;        // (G, H) scalar
  const void* b_hh;        // (G,) scalar or null
  const void* residual;    // (T, B, H) scalar or null
  const int64_t* lengths;  // (B,) or null
  void* y;                 // (T, B, H) scalar
  void* hist;              // (T, B, H) scalar: hist[t] = state before time t; hist[first t] = h0 on entry
  float* h_state;          // (B, H) fp32: h0 on entry, h_n on exit
  float* c_state;          // (B, H) fp32 (LSTM): c0 on entry, c_n on exit
  float* saved;            // (T, B, n_saved*H) fp32, or null when no backward will run
};

struct BwdParams {
  int T, B, H;
  bool reverse;
  const void* w_hh;        // (G, H) scalar
  const void* dy;          // (T, B, H) scalar
  const void* hist;        // (T, B, H) scalar (GRU: h_prev)
  const float* saved;      // (T, B, n_saved*H) fp32 from the forward
  const int64_t* lengths;  // (B,) or null
  void* dgh;               // (T, B, G) scalar: d(gates) on the W_hh side, 0 at invalid steps
  void* dgx_n;             // (T, B, H) scalar (GRU): d(gx_n), which differs from dgh_n by a factor r
  float* dh;               // (B, H) fp32: dh_n on entry, dh0 on exit
  float* dc;               // (B, H) fp32 (LSTM): dc_n on entry, dc0 on exit
};

struct LaunchPlan {
  int grid = 0;
  size_t smem = 0;
  int blocks_per_sm = 0;  // co-resident CTAs per SM at this shared-memory size (0: does not fit)
  int num_sms = 0;
  int max_smem_optin = 0;
  bool cooperative = false;  // device supports cooperative launch
  bool fits() const {
    return cooperative && (int)smem <= max_smem_optin && blocks_per_sm > 0 && grid <= blocks_per_sm * num_sms;
  }
};

// Kernel entry pointers, one file each (gru_fwd.cu, ...), so the instantiations compile in parallel.
const void* gru_fwd_kernel(DType d, bool tf32);
const void* gru_bwd_kernel(DType d, bool tf32);
const void* lstm_fwd_kernel(DType d, bool tf32);
const void* lstm_bwd_kernel(DType d, bool tf32);

inline const void* rnn_kernel(Cell cell, bool backward, DType d, bool tf32) {
  if (cell == Cell::GRU) return backward ? gru_bwd_kernel(d, tf32) : gru_fwd_kernel(d, tf32);
  return backward ? lstm_bwd_kernel(d, tf32) : lstm_fwd_kernel(d, tf32);
}

// launch.cu: occupancy query, cooperative launch, and the barrier-only latency floor kernel.
cudaError_t plan_launch(const void* kernel, size_t smem, int grid, LaunchPlan* plan);
cudaError_t launch_cooperative(const void* kernel, size_t smem, int grid, void* params, cudaStream_t stream);
cudaError_t barrier_floor(int steps, int grid, cudaStream_t stream, float* ms);

}  // namespace fusedrnn
