// CPU emulation of the part of the CUDA execution model that csrc/rnn_kernels.cuh uses, so that the
// kernels' own source runs on a machine without a GPU (tests/test_cuda_emu.py). Compiled with g++
// and -DFUSEDRNN_EMULATE; rnn_kernels.cuh then includes this header instead of
// <cooperative_groups.h> and <mma.h>.
//
// What is emulated (see csrc/emu/README.md for what is not):
// - every thread of every CTA is a coroutine (runtime.cpp); a thread runs until it reaches a
//   barrier: __syncthreads() (its CTA), grid.sync() (the whole grid) or a warp-collective wmma op
//   (its warp). A barrier is released when every thread of its scope has arrived; a thread that
//   waits for threads that exited, or at a different kind of barrier, is reported as a deadlock.
// - the order in which ready threads run is a policy (in order, reversed, shuffled): a kernel whose
//   result depends on it has a missing barrier.
// - wmma fragments follow the documented semantics (matrix_a row/col-major M x K, matrix_b K x N,
//   accumulator M x N, fp32 accumulation), with the elements spread over the 32 lanes of the warp
//   (lane l holds elements l*ne .. l*ne+ne-1 of the row-major logical matrix), so elementwise
//   fragment code sees only its lane's share, and mma_sync needs all 32 lanes. Pointer alignment
//   (32 bytes), ldm, and all lanes calling the same operation with the same arguments are checked.
// - dynamic shared memory is a per-CTA buffer of exactly the launch's size between guard zones (0xFD
//   bytes, at least as large as the buffer), filled with 0xFF bytes (NaN in fp16, bf16 and fp32) so
//   that reading what nobody wrote shows.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <source_location>
#include <type_traits>

namespace fusedrnn_emu {

uint3 thread_idx();
uint3 block_idx();
unsigned lane_id();
unsigned char* dynamic_smem();
// A barrier is identified by its source line (not its machine call site: the host compiler may
// duplicate a call, e.g. when it unswitches a loop on a per-thread condition, which nvcc never does
// to a barrier).
void syncthreads(const char* file, int line);
void grid_sync(const char* file, int line);

// A warp-collective operation as the lanes called it: the CUDA guide requires every lane of the warp
// to call the same operation with the same pointer, ldm and layout; the runtime checks that all 32
// lanes agree before releasing the warp.
struct WarpOp {
  int kind;  // 1 load_matrix_sync, 2 store_matrix_sync, 3 mma_sync (operands published), 4 mma_sync (done)
  const void* ptr;
  unsigned ldm;
  int layout;
  bool operator==(const WarpOp& o) const { return kind == o.kind && ptr == o.ptr && ldm == o.ldm && layout == o.layout; }
};
void warp_sync(const WarpOp& op);
// Warp rendezvous: every lane publishes `mine` (n pointers) and waits for all 32 lanes; returns the
// warp's table (lane l's pointers at [l*n, l*n+n)). Valid until the warp's next rendezvous.
void* const* warp_exchange(void* const* mine, int n, const WarpOp& op);
[[noreturn]] void fail(const char* what);

// cp.async (LDGSTS), modelled as late as the PTX rules allow: the copy is recorded at issue and
// lands only when the issuing thread's cp.async.wait_group / wait_all covers its group. At issue
// the destination's 16 bytes become 0xFF (NaN in every float format: its contents are undefined
// until completion), so a read before the matching wait, or by another thread before a barrier
// that follows the wait, sees NaN; the source is read at landing and must still hold what it held
// at issue (a copy whose source changes while in flight fails the launch); a copy never waited
// for fails the launch at thread exit.
void cp_async(void* smem_dst, const void* gmem_src, int src_bytes);
void cp_async_commit();
void cp_async_wait(int pending_groups);  // cp.async.wait_group N (wait_all: N = -1)

// Fast-math intrinsics at the accuracy the PTX ISA documents, not libm's: the result is the exact
// value moved by the documented maximum relative error, with a sign that depends on the input bits
// (so the error is as large as the hardware may make it, in both directions across inputs).
float ex2_approx_ftz(float x);  // ex2.approx.ftz.f32
float rcp_approx_ftz(float x);  // rcp.approx.ftz.f32
float tanh_approx(float x);     // tanh.approx.f32

// cvt.rna.tf32.f32: round to nearest (ties away from zero) to a 10-bit mantissa, kept as fp32 bits.
inline uint32_t tf32_rna(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0x1000u) & 0xffffe000u;
  return bits;
}

// Global loads (__ldcg): the address must be aligned to the access size, as on the GPU.
template <typename T>
inline T ldcg(const T* p) {
  if (reinterpret_cast<uintptr_t>(p) % sizeof(T) != 0) fail("__ldcg: address not aligned to the access size");
  return *p;
}

// mma.sync.aligned.{m16n8k16 .f16/.bf16, m16n8k8 .tf32}.row.col.f32 over the whole warp, with the
// fragment layouts the PTX ISA documents (groupID g = lane >> 2, t = lane % 4):
//   m16n8k16  A reg i: row g + 8*(i & 1), cols 2t + 8*(i >> 1) + {0, 1} (low half first)
//             B reg i: rows 2t + 8*i + {0, 1}, col g
//   m16n8k8   A reg i: row g + 8*(i & 1), col t + 4*(i >> 1)      (tf32: the low 13 bits are ignored)
//             B reg i: row t + 4*i, col g
//   C/D reg i: row g + 8*(i >> 1), col 2t + (i & 1)
// D = A·B + C with exact products and fp32 sums in k order. Every lane must call the same shape
// with its own registers (checked); d may alias nothing else.
enum class MmaType : int { F16 = 0, BF16 = 1, TF32 = 2 };
void mma_sync(float* d, const uint32_t* a, const uint32_t* b, MmaType type);

}  // namespace fusedrnn_emu

#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#define threadIdx (::fusedrnn_emu::thread_idx())
#define blockIdx (::fusedrnn_emu::block_idx())
#define __syncthreads() ::fusedrnn_emu::syncthreads(__FILE__, __LINE__)
#define __trap() ::fusedrnn_emu::fail("__trap() reached")

template <typename T>
inline T __ldcg(const T* p) {
  return fusedrnn_emu::ldcg(p);
}
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fmul_rn(float a, float b) {
  volatile float r = a * b;  // one rounding, never contracted into a later add
  return r;
}
inline int min(int a, int b) { return a < b ? a : b; }

// ---------------------------------------------------------------------------------------------
// cooperative_groups: this_grid().sync()
// ---------------------------------------------------------------------------------------------
namespace cooperative_groups {
struct grid_group {
  void sync(std::source_location at = std::source_location::current()) const {
    fusedrnn_emu::grid_sync(at.file_name(), (int)at.line());
  }
};
inline grid_group this_grid() { return {}; }
}  // namespace cooperative_groups

// ---------------------------------------------------------------------------------------------
// nvcuda::wmma: the fragment types and the five operations the kernels use
// ---------------------------------------------------------------------------------------------
namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

template <typename T> struct storage { using type = T; };
template <> struct storage<precision::tf32> { using type = float; };

template <typename Use, int M, int N, int K> struct dims;
template <int M, int N, int K> struct dims<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K> struct dims<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K> struct dims<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  using element_type = T;
  using storage_element_type = typename storage<T>::type;
  static constexpr int rows = dims<Use, M, N, K>::rows, cols = dims<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols / 32;
  static_assert(rows * cols % 32 == 0, "fragment elements must spread evenly over a warp");
  storage_element_type x[num_elements];
  // (row, col) of this lane's element e in the logical matrix.
  static int row_of(unsigned lane, int e) { return ((int)lane * num_elements + e) / cols; }
  static int col_of(unsigned lane, int e) { return ((int)lane * num_elements + e) % cols; }
};

inline float __float_to_tf32(float f) {
  // cvt.rna.tf32.f32: round to nearest (ties away from zero) to a 10-bit mantissa, kept as fp32.
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0x1000u) & 0xffffe000u;
  std::memcpy(&f, &bits, 4);
  return f;
}

namespace detail {
inline float to_float(float v) { return v; }
inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
// An MMA operand as the tensor cores read it.
template <typename T, typename S>
inline float operand(S v) {
  if constexpr (std::is_same<T, precision::tf32>::value) {
    uint32_t bits;
    float f = v;
    std::memcpy(&bits, &f, 4);
    bits &= 0xffffe000u;
    std::memcpy(&f, &bits, 4);
    return f;
  } else {
    return to_float(v);
  }
}

// The documented load/store requirements: a 256-bit aligned pointer; ldm a multiple of 16 bytes.
inline void check_ptr(const void* p, unsigned ldm, size_t elem, const char* op) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) fusedrnn_emu::fail(op);
  if ((ldm * elem) % 16 != 0) fusedrnn_emu::fail(op);
}
}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename L>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, float v) {
  for (int e = 0; e < f.num_elements; ++e) f.x[e] = static_cast<typename fragment<Use, M, N, K, T, L>::storage_element_type>(v);
}

// matrix_a / matrix_b with the memory layout in the type.
template <typename Use, int M, int N, int K, typename T, typename L, typename P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const P* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, L>;
  detail::check_ptr(p, ldm, sizeof(P), "wmma::load_matrix_sync: pointer not 32-byte aligned or ldm not a multiple of 16 bytes");
  constexpr bool row = std::is_same<L, row_major>::value;
  fusedrnn_emu::warp_sync({1, p, ldm, row ? 0 : 1});  // all lanes agree on the arguments
  const unsigned lane = fusedrnn_emu::lane_id();
  for (int e = 0; e < F::num_elements; ++e) {
    const int r = F::row_of(lane, e), c = F::col_of(lane, e);
    const size_t off = row ? (size_t)r * ldm + c : (size_t)c * ldm + r;
    f.x[e] = static_cast<typename F::storage_element_type>(p[off]);
  }
}

template <int M, int N, int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout) {
  using F = fragment<accumulator, M, N, K, float>;
  detail::check_ptr(p, ldm, sizeof(float), "wmma::store_matrix_sync: pointer not 32-byte aligned or ldm not a multiple of 16 bytes");
  fusedrnn_emu::warp_sync({2, p, ldm, (int)layout});
  const unsigned lane = fusedrnn_emu::lane_id();
  for (int e = 0; e < F::num_elements; ++e) {
    const int r = F::row_of(lane, e), c = F::col_of(lane, e);
    p[layout == mem_row_major ? (size_t)r * ldm + c : (size_t)c * ldm + r] = f.x[e];
  }
}

// D = A·B + C over the whole warp: products and sums in fp32 (the tensor cores' products of
// fp16/bf16/tf32 operands are exact in fp32; their summation order is unspecified). TF32 operands
// are read as the hardware reads them: the low 13 mantissa bits of the fp32 value are ignored.
template <int M, int N, int K, typename TA, typename TB, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
  using FA = fragment<matrix_a, M, N, K, TA, LA>;
  using FB = fragment<matrix_b, M, N, K, TB, LB>;
  using FC = fragment<accumulator, M, N, K, float>;
  void* mine[2] = {const_cast<FA*>(&a), const_cast<FB*>(&b)};
  void* const* table = fusedrnn_emu::warp_exchange(mine, 2, {3, nullptr, 0, 0});
  auto A = [&](int m, int k) {
    const int idx = m * FA::cols + k;
    return detail::operand<TA>(static_cast<const FA*>(table[2 * (idx / FA::num_elements)])->x[idx % FA::num_elements]);
  };
  auto Bv = [&](int k, int n) {
    const int idx = k * FB::cols + n;
    return detail::operand<TB>(static_cast<const FB*>(table[2 * (idx / FB::num_elements) + 1])->x[idx % FB::num_elements]);
  };
  const unsigned lane = fusedrnn_emu::lane_id();
  float out[FC::num_elements];
  for (int e = 0; e < FC::num_elements; ++e) {
    const int m = FC::row_of(lane, e), n = FC::col_of(lane, e);
    float s = c.x[e];
    for (int k = 0; k < K; ++k) s += A(m, k) * Bv(k, n);
    out[e] = s;
  }
  fusedrnn_emu::warp_sync({4, nullptr, 0, 0});  // every lane has read every other lane's a and b
  for (int e = 0; e < FC::num_elements; ++e) d.x[e] = out[e];
}

}  // namespace wmma
}  // namespace nvcuda
