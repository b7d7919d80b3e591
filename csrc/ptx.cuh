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
__device__ __forceinline__ float ex2_approx(float x) {
#if defined(FUSEDRNN_EMULATE)
  return fusedrnn_emu::ex2_approx_ftz(x);
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

__device__ __forceinline__ float rcp_approx(float x) {
#if defined(FUSEDRNN_EMULATE)
  return fusedrnn_emu::rcp_approx_ftz(x);
#else
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

__device__ __forceinline__ float tanh_approx(float x) {
#if defined(FUSEDRNN_EMULATE)
  return fusedrnn_emu::tanh_approx(x);
#else
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

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

// Branch-free sigmoid and tanh from ex2.approx and rcp.approx: no IEEE-division slow path (a CALL)
// in the step loop. They saturate without NaN: ex2 overflows to +inf and rcp(inf) = 0; ex2 underflows
// to 0 and rcp(1) = 1 within rcp's error. Absolute error a few 2^-23 (docs/numerics.md).
__device__ __forceinline__ float sigmoid_fast(float x) { return rcp_approx(1.f + ex2_approx(-1.44269504088896341f * x)); }
__device__ __forceinline__ float tanh_fast(float x) { return __fmaf_rn(2.f, sigmoid_fast(2.f * x), -1.f); }

}  // namespace fusedrnn
