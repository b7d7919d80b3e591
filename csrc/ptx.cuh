// Device primitives the kernels use beyond CUDA C++: tensor-core mma.sync, cp.async, fast-math
// intrinsics and TF32 rounding. On the GPU each is one PTX instruction; in the CPU emulator build
// (-DFUSEDRNN_EMULATE, csrc/emu/) each calls the emulator's model of that instruction, which
// follows the PTX ISA's documented semantics adversarially (csrc/emu/cuda_emu.h).
#pragma once

#include <cstdint>

namespace fusedrnn {

// ---------------------------------------------------------------------------------------------
// Tensor-core MMA: D = A·B + D, fp32 accumulation, one warp.
//   __half / __nv_bfloat16: mma.m16n8k16, A 16x16 (4 regs), B 16x8 (2 regs)
//   float:                  mma.m16n8k8 with .tf32 operands, A 16x8 (4 regs), B 8x8 (2 regs)
// Register i of each fragment holds the elements csrc/emu/cuda_emu.h lists (the PTX ISA layouts).
// ---------------------------------------------------------------------------------------------
template <typename T> struct Mma;

#if defined(FUSEDRNN_EMULATE)
template <typename T> struct MmaEmu {
  static constexpr fusedrnn_emu::MmaType kType = std::is_same<T, float>::value ? fusedrnn_emu::MmaType::TF32
                                                 : std::is_same<T, __half>::value ? fusedrnn_emu::MmaType::F16
                                                                                  : fusedrnn_emu::MmaType::BF16;
  static void run(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
    const uint32_t a[4] = {a0, a1, a2, a3}, b[2] = {b0, b1};
    fusedrnn_emu::mma_sync(d, a, b, kType);
  }
};
template <> struct Mma<__half> : MmaEmu<__half> { static constexpr int K = 16; };
template <> struct Mma<__nv_bfloat16> : MmaEmu<__nv_bfloat16> { static constexpr int K = 16; };
template <> struct Mma<float> : MmaEmu<float> { static constexpr int K = 8; };
#else
#define FUSEDRNN_MMA_ASM(shape, types)                                                                   \
  asm volatile("mma.sync.aligned." shape ".row.col.f32." types ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "   \
               "{%8,%9}, {%0,%1,%2,%3};\n"                                                               \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                          \
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1))
template <> struct Mma<__half> {
  static constexpr int K = 16;
  __device__ __forceinline__ static void run(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                             uint32_t b0, uint32_t b1) {
    FUSEDRNN_MMA_ASM("m16n8k16", "f16.f16");
  }
};
template <> struct Mma<__nv_bfloat16> {
  static constexpr int K = 16;
  __device__ __forceinline__ static void run(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                             uint32_t b0, uint32_t b1) {
    FUSEDRNN_MMA_ASM("m16n8k16", "bf16.bf16");
  }
};
template <> struct Mma<float> {
  static constexpr int K = 8;
  __device__ __forceinline__ static void run(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                             uint32_t b0, uint32_t b1) {
    FUSEDRNN_MMA_ASM("m16n8k8", "tf32.tf32");
  }
};
#undef FUSEDRNN_MMA_ASM
#endif

// ---------------------------------------------------------------------------------------------
// cp.async.cg (LDGSTS): 16 bytes global -> shared, asynchronous; `full` false copies nothing and
// zero-fills the 16 bytes. The data may be read by the issuing thread after cp_async_wait<N>()
// covers its group, by other threads after that and a barrier. The "memory" clobbers keep the
// compiler from moving shared-memory loads and stores across these (a load of the destination
// hoisted above the wait would read it before the copy lands).
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, bool full) {
#if defined(FUSEDRNN_EMULATE)
  fusedrnn_emu::cp_async(smem_dst, gmem_src, full ? 16 : 0);
#else
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src), "r"(full ? 16 : 0)
               : "memory");
#endif
}

// cp_async_16 when `go`, else nothing: a predicated copy (no branch around it).
__device__ __forceinline__ void cp_async_16_if(bool go, void* smem_dst, const void* gmem_src, bool full) {
#if defined(FUSEDRNN_EMULATE)
  if (go) fusedrnn_emu::cp_async(smem_dst, gmem_src, full ? 16 : 0);
#else
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %3, 0;\n @p cp.async.cg.shared.global [%0], [%1], 16, %2;\n}\n" ::"r"(dst),
      "l"(gmem_src), "r"(full ? 16 : 0), "r"((int)go)
      : "memory");
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(FUSEDRNN_EMULATE)
  fusedrnn_emu::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most N of this thread's committed groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
#if defined(FUSEDRNN_EMULATE)
  fusedrnn_emu::cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// ---------------------------------------------------------------------------------------------
// Fast-math intrinsics (one MUFU instruction each; accuracy in docs/numerics.md)
// ---------------------------------------------------------------------------------------------
#if defined(FUSEDRNN_EMULATE)
#define FUSEDRNN_UNARY_F32(name, ptx, model) \
  __device__ __forceinline__ float name(float x) { return fusedrnn_emu::model(x); }
#else
#define FUSEDRNN_UNARY_F32(name, ptx, model)         \
  __device__ __forceinline__ float name(float x) {   \
    float y;                                         \
    asm(ptx " %0, %1;" : "=f"(y) : "f"(x));          \
    return y;                                        \
  }
#endif
FUSEDRNN_UNARY_F32(ex2_approx, "ex2.approx.ftz.f32", ex2_approx_ftz)
FUSEDRNN_UNARY_F32(rcp_approx, "rcp.approx.ftz.f32", rcp_approx_ftz)
FUSEDRNN_UNARY_F32(tanh_approx, "tanh.approx.f32", tanh_approx)
#undef FUSEDRNN_UNARY_F32

// cvt.rna.tf32.f32: round to a 10-bit mantissa, nearest, ties away from zero (kept in an fp32 word).
__device__ __forceinline__ uint32_t tf32_rna(float x) {
#if defined(FUSEDRNN_EMULATE)
  return fusedrnn_emu::tf32_rna(x);
#else
  uint32_t y;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(y) : "f"(x));
  return y;
#endif
}

// ---------------------------------------------------------------------------------------------
// Global memory that other CTAs read during the launch, and ready flags
// ---------------------------------------------------------------------------------------------

// A store of the exchanged operand (hist, dgh) that other CTAs read later in the same launch: a plain
// store on the GPU; the emulator stamps it, and checks every read of it against the barriers and
// flags that order the two (csrc/emu/cuda_emu.h).
template <typename T> __device__ __forceinline__ void exchange_store(T* p, T v) {
  *p = v;
#if defined(FUSEDRNN_EMULATE)
  fusedrnn_emu::exchange_store(p, (int)sizeof(T));
#endif
}

// st.release.gpu: the value is written after every memory operation ordered before it, including
// other threads' stores that a __syncthreads() ordered before this thread's release.
__device__ __forceinline__ void flag_release(int* p, int v) {
#if defined(FUSEDRNN_EMULATE)
  fusedrnn_emu::flag_release(p, v);
#else
  asm volatile("st.release.gpu.global.s32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
#endif
}

// ld.acquire.gpu: this thread's later memory operations see what the releaser had ordered before the
// release whose value this load returns.
__device__ __forceinline__ int flag_acquire(const int* p) {
#if defined(FUSEDRNN_EMULATE)
  return fusedrnn_emu::flag_load(p, true);
#else
  int v;
  asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
#endif
}

// Ready flags, one per CTA (batch group bg, unit group ug) at flags[bg * n_ug + ug]: the number of
// steps whose exchanged rows the CTA has written. An alternative to the grid barrier (off unless the
// glue passes flags): a producer publishes after the __syncthreads() that follows its stores, with no
// shared counter to serialise on; a consumer waits only for the CTAs of its own batch group.

// Thread 0 releases `value`; every thread of the CTA must call this after a __syncthreads() that
// follows the stores it publishes.
__device__ __forceinline__ void publish_ready(int* flag, int value) {
  if (threadIdx.x == 0) flag_release(flag, value);
}

// ld.relaxed.gpu: a strong load with no ordering of its own (no L1 invalidation after it); with a
// fence_acquire() after it, the acquire pattern of the PTX memory model.
__device__ __forceinline__ int flag_relaxed(const int* p) {
#if defined(FUSEDRNN_EMULATE)
  return fusedrnn_emu::flag_load(p, false);
#else
  int v;
  asm volatile("ld.relaxed.gpu.global.s32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
#endif
}

// fence.acq_rel.gpu: this thread's later memory operations see what the releasers of every value
// its earlier relaxed loads returned had ordered before their releases.
__device__ __forceinline__ void fence_acquire() {
#if defined(FUSEDRNN_EMULATE)
  fusedrnn_emu::fence_acq_rel();
#else
  asm volatile("fence.acq_rel.gpu;\n" ::: "memory");
#endif
}

// Backoff between poll rounds that came back short (no-op in the emulator: its polls yield anyway).
__device__ __forceinline__ void poll_backoff(unsigned ns) {
#if !defined(FUSEDRNN_EMULATE)
  __nanosleep(ns);
#endif
}

// Returns once flags[0 .. n-1] are all >= need; every thread of the CTA must call it (uniform control
// flow: it ends in a __syncthreads()). One warp polls, so the CTA's other 7 warps add no traffic to
// the 1-2 cache lines every CTA of the batch group polls: each lane reads its flags (lane, lane + 32,
// lane + 64, lane + 96 in a round of 128, then the next 128) with relaxed loads, which overlap (no
// L1 invalidation after each, as an acquire load has), and backs off (32, 64, 128 ns) between rounds
// that came back short. After success one fence.acq_rel.gpu per lane makes its relaxed reads an
// acquire, and the __syncthreads() passes what the warp acquired on to every thread of the CTA, so
// that the reads that follow (the cp.async staging) see what every producer wrote before its
// release. (No vote in the loop: on sm_80 a vote in a loop is compiled to a CALL.)
__device__ __forceinline__ void wait_ready(const int* flags, int n, int need) {
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    for (int base = 0; base < n; base += 128) {
      unsigned backoff_ns = 0;
      for (;;) {
        int v[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = base + lane + 32 * e;
          v[e] = i < n ? flag_relaxed(flags + i) : need;
        }
        bool ok = true;
#pragma unroll
        for (int e = 0; e < 4; ++e) ok = ok && v[e] >= need;
        if (ok) break;
        if (backoff_ns != 0) poll_backoff(backoff_ns);
        backoff_ns = backoff_ns == 0 ? 32u : (backoff_ns < 128u ? 2u * backoff_ns : backoff_ns);
      }
    }
    fence_acquire();
  }
  __syncthreads();
}

// Branch-free sigmoid and tanh from ex2.approx and rcp.approx: no IEEE-division slow path (a CALL)
// in the step loop. They saturate without NaN: ex2 overflows to +inf and rcp(inf) = 0; ex2 underflows
// to 0 and rcp(1) = 1 within rcp's error. Absolute error a few 2^-23 (docs/numerics.md).
__device__ __forceinline__ float sigmoid_fast(float x) { return rcp_approx(1.f + ex2_approx(-1.44269504088896341f * x)); }
__device__ __forceinline__ float tanh_fast(float x) { return __fmaf_rn(2.f, sigmoid_fast(2.f * x), -1.f); }

// ---------------------------------------------------------------------------------------------
// Zoneout's random numbers (fusedrnn/zoneout.py `uniform`, Triton's tl.rand, bit for bit): Philox
// 4x32 with 10 rounds of counter (lo(offset), hi(offset), 0, 0) and key (lo(seed), hi(seed)), its
// first word as int32 with negative values folded (~x), times tl.rand's scale, in float32.
// mul.hi.u32 (__umulhi) on the GPU; plain 64-bit products in the emulator build.
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ uint32_t mulhi_u32(uint32_t a, uint32_t b) {
#if defined(FUSEDRNN_EMULATE)
  return (uint32_t)(((uint64_t)a * (uint64_t)b) >> 32);
#else
  return __umulhi(a, b);
#endif
}

__device__ __forceinline__ uint32_t philox_word0(uint64_t seed, uint64_t offset) {
  uint32_t c0 = (uint32_t)offset, c1 = (uint32_t)(offset >> 32), c2 = 0u, c3 = 0u;
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi_b = mulhi_u32(0xCD9E8D57u, c2), lo_b = 0xCD9E8D57u * c2;
    const uint32_t hi_a = mulhi_u32(0xD2511F53u, c0), lo_a = 0xD2511F53u * c0;
    c0 = hi_b ^ c1 ^ k0;
    c1 = lo_b;
    c2 = hi_a ^ c3 ^ k1;
    c3 = lo_a;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c0;
}

// [0, 1) in float32: tl.rand(seed, offset).
__device__ __forceinline__ float philox_uniform(uint64_t seed, uint64_t offset) {
  uint32_t x = philox_word0(seed, offset);
  x = x >= 0x80000000u ? ~x : x;  // the word as int32, negative values folded to -x - 1
  return __fmul_rn((float)(int)x, 4.6566127342e-10f);
}

}  // namespace fusedrnn
