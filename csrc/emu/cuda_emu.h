// CPU emulation of the part of the CUDA execution model that csrc/'s kernels use, so that the
// kernels' own source runs on a machine without a GPU (tests/test_cuda_kernels.py). Compiled with g++
// and -DFUSEDRNN_EMULATE; rnn_kernels.cuh then includes this header instead of <cooperative_groups.h>,
// and csrc/ptx.cuh calls the models below instead of inline PTX.
//
// What is emulated (csrc/emu/README.md says what is not):
// - every thread of every CTA is a coroutine (runtime.cpp); a thread runs until it reaches a
//   barrier: __syncthreads() (its CTA), grid.sync() (the whole grid) or a warp-collective mma.sync
//   (its warp). A barrier is released when every thread of its scope has arrived; a thread that
//   waits for threads that exited, or at a different barrier, is reported as a deadlock.
// - the order in which ready threads run is a policy (in order, reversed, shuffled, eager): a kernel
//   whose result depends on it has a missing barrier.
// - mma.sync with the PTX ISA's fragment layouts; cp.async landing at the issuing thread's matching
//   wait (destination NaN until then, source checked unchanged); ex2/rcp/tanh.approx at their
//   documented error.
// - visibility of global memory between threads (release/acquire, at barrier granularity): a store
//   that other CTAs read during the launch (exchange_store) is stamped with its writer and the
//   writer's CTA epoch (__syncthreads()/grid.sync() completed so far); a cp.async or __ldcg read of a
//   stamped location fails the launch unless the write is ordered before it: by the reader's own
//   program order, a __syncthreads() of the writer's CTA since the write (same CTA), a grid.sync(), or
//   a ready flag the writer's CTA released after a __syncthreads() that followed the write and the
//   reader acquired (an acquire load, or a relaxed load and then fence.acq_rel), passed on to other
//   lanes only by __syncwarp() or __syncthreads(). A GPU would return stale data there; the emulator
//   says which rule was broken. Polling a flag yields, so producers run; threads that only poll
//   flags nobody releases are reported as a deadlock.
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
// grid_group::barrier_arrive(): the CTA barrier, then this CTA's writes so far are published at the
// next grid barrier (barrier_wait() is grid_sync); writes between the two are not.
void grid_arrive(const char* file, int line);

// A warp-collective operation as the lanes called it: every lane of the warp must call the same
// operation (for mma.sync: the same shape and types); the runtime checks that all 32 lanes agree
// before releasing the warp.
struct WarpOp {
  int kind;  // 10 + MmaType: mma.sync operands published; 20 + MmaType: every lane has read them
  bool operator==(const WarpOp& o) const { return kind == o.kind; }
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

// Visibility between CTAs (see the top of this file). exchange_store stamps bytes [p, p + bytes)
// just written; check_read fails the launch if the calling thread may not see every stamped write in
// [p, p + bytes) yet.
void exchange_store(const void* p, int bytes);
void check_read(const void* p, int bytes);
// Ready flags: ld.acquire.gpu / ld.relaxed.gpu (both yield to the scheduler: a poll loop lets the
// producers run), st.release.gpu, fence.acq_rel.gpu.
int flag_load(const int* p, bool acquire);
void flag_release(int* p, int value);
void fence_acq_rel();
// __syncwarp(full mask) over the whole warp.
void syncwarp();

// Global loads (__ldcg): the address must be aligned to the access size, as on the GPU.
template <typename T>
inline T ldcg(const T* p) {
  if (reinterpret_cast<uintptr_t>(p) % sizeof(T) != 0) fail("__ldcg: address not aligned to the access size");
  check_read(p, (int)sizeof(T));
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
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  if (mask != 0xffffffffu) fusedrnn_emu::fail("__syncwarp: only the full-warp mask is emulated");
  fusedrnn_emu::syncwarp();
}
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fmul_rn(float a, float b) {
  volatile float r = a * b;  // one rounding, never contracted into a later add
  return r;
}
inline int min(int a, int b) { return a < b ? a : b; }

// ---------------------------------------------------------------------------------------------
// cooperative_groups: this_grid().sync(), barrier_arrive() / barrier_wait()
// ---------------------------------------------------------------------------------------------
namespace cooperative_groups {
struct grid_group {
  using arrival_token = unsigned int;
  // The call site (file, line) names the barrier in the emulator's diagnostics. __builtin_FILE /
  // __builtin_LINE as default arguments give it under C++17 (g++ and clang), which some torch
  // versions' cpp_extension compile with; std::source_location would need C++20.
  void sync(const char* file = __builtin_FILE(), int line = __builtin_LINE()) const {
    fusedrnn_emu::grid_sync(file, line);
  }
  arrival_token barrier_arrive(const char* file = __builtin_FILE(), int line = __builtin_LINE()) const {
    fusedrnn_emu::grid_arrive(file, line);
    return 0;
  }
  void barrier_wait(arrival_token&&, const char* file = __builtin_FILE(), int line = __builtin_LINE()) const {
    fusedrnn_emu::grid_sync(file, line);
  }
};
inline grid_group this_grid() { return {}; }
}  // namespace cooperative_groups

