// Persistent cooperative GRU/LSTM/Elman RNN recurrence kernels (one layer, one direction, whole sequence).
// CELL: 0 GRU, 1 LSTM, 2 Elman RNN tanh, 3 Elman RNN relu (rnn_launch.h: n_gates, n_saved).
//
// Grid: plan.grid = unit groups x batch groups, all co-resident (cooperative launch). CTA (ug, bg)
// owns `units` hidden units of every gate and `rows` batch rows (csrc/rnn_launch.h, make_plan).
// Each step, for 16 rows at a time, RecProduct computes D (rows of A x 16) = A · Bᵀ on tensor cores:
//   A: the CTA's W_hh slice, on chip for the whole sequence in MMA fragment order (each warp's first
//      blocks in registers, the rest in shared memory);
//   B: the exchanged operand rows (forward h_prev = hist[t], backward dgates[t]): every lane stages
//      with cp.async exactly the 16 bytes it later feeds the MMA, through a ring of up to 8 blocks, so
//      staging needs no CTA barrier;
//   the 8 warps split K; their fp32 partial sums meet in shared memory behind one __syncthreads.
// Forward step:  stage hist[t] | MMA | partial sums | cell math in fp32 (inputs loaded a pass ahead)
//                | y[t], saved, h_t -> hist[next t] | grid.sync
// Backward step: grid.sync (dgh[t] complete) | per pass: stage dgh[t] | MMA with the W_hh column
//                slice | dh += partial sums | phase A of the next step for the same rows: dgates of
//                the CTA's units (inputs loaded before the pass's MMA) -> dgh[t-1]
// With ready flags (params.ready, off by default) each CTA publishes a per-CTA flag where the grid
// barrier was, and waits for its batch group's flags before staging (ptx.cuh, wait_ready).
// Math follows fusedrnn/reference.py; csrc/README.md walks the step's critical path.
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
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define FUSEDRNN_KERNEL_BODY 1
#else
#define FUSEDRNN_KERNEL_BODY 0
#endif
#define FUSEDRNN_DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#endif

#include <cstring>
#include <type_traits>
#include <utility>

#include "ptx.cuh"
#include "rnn_launch.h"

namespace fusedrnn {

namespace cg = cooperative_groups;

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
    T v;
    memcpy(&v, &bits, 2);
    return v;
  } else {
    return __ldcg(p);
  }
}

__device__ __forceinline__ uint32_t float_bits(float v) {
  uint32_t w;
  memcpy(&w, &v, 4);
  return w;
}
__device__ __forceinline__ float bits_float(uint32_t w) {
  float v;
  memcpy(&v, &w, 4);
  return v;
}
template <typename T> __device__ __forceinline__ uint32_t pack_pair(T lo, T hi) {
  unsigned short a, b;
  memcpy(&a, &lo, 2);
  memcpy(&b, &hi, 2);
  return (uint32_t)a | ((uint32_t)b << 16);
}

// f(std::integral_constant<int, I>) for I = 0 .. N-1, each I a compile-time constant (register
// array indices and cp.async.wait_group counts must be).
template <int I, int N, typename F> __device__ __forceinline__ void static_for_from(F& f) {
  if constexpr (I < N) {
    f(std::integral_constant<int, I>{});
    static_for_from<I + 1, N>(f);
  }
}
template <int N, typename F> __device__ __forceinline__ void static_for(F&& f) { static_for_from<0, N>(f); }

// A 16- or 32-bit element's raw bits, zero-extended into a register of its own: a prefetched input
// kept this way is touched by nothing (no packing, no conversion) until it is used, so its load can
// fly through the grid barrier.
template <typename T> __device__ __forceinline__ uint32_t load_bits(const T* p) {
  if constexpr (sizeof(T) == 2) {
    return *reinterpret_cast<const unsigned short*>(p);
  } else {
    return *reinterpret_cast<const uint32_t*>(p);
  }
}
template <typename T> __device__ __forceinline__ float bits_to_f(uint32_t raw) {
  if constexpr (sizeof(T) == 2) {
    const unsigned short h = (unsigned short)raw;
    T v;
    memcpy(&v, &h, 2);
    return to_f(v);
  } else {
    return bits_float(raw);
  }
}

// c_t = f * c_{t-1} + i * g, written once so that forward and backward round identically.
__device__ __forceinline__ float lstm_c_new(float i, float f, float g, float c_prev) {
  return __fmaf_rn(f, c_prev, __fmul_rn(i, g));
}

// The Elman RNN's nonlinearity (CELL 2: tanh, 3: relu) and its derivative from the output h' alone
// (what the forward saves): 1 - h'^2, and (h' > 0) as torch's relu backward.
template <int CELL> __device__ __forceinline__ float elman_act(float v) {
  static_assert(is_elman(CELL), "an Elman RNN cell");
  if constexpr (CELL == 2) {
    return tanh_fast(v);
  } else {
    return v < 0.f ? 0.f : v;
  }
}
template <int CELL> __device__ __forceinline__ float elman_act_grad(float h) {
  static_assert(is_elman(CELL), "an Elman RNN cell");
  if constexpr (CELL == 2) {
    return 1.f - h * h;
  } else {
    return h > 0.f ? 1.f : 0.f;
  }
}

// Zoneout in the ZO kernels (fusedrnn/zoneout.py, the Triton kernels' zone / zone_grad): state w (0 h,
// 1 c) of element `off` = (t * B + b) * H + j. Training: the element keeps its old value where
// philox_uniform(seed_w, off) < p_w (a selection, exact); evaluation: p * old + (1 - p) * new. A state
// with p = 0 is not zoned. The seeds are read from device memory once per launch (no host read).
struct Zone {
  const ZoneParams& z;  // the kernel parameter (p, 1 - p, whether training: constant-bank operands)
  uint64_t seed[2];
  // zoned: a ZO kernel (a compile-time constant): the seeds are loaded, else nothing is.
  __device__ __forceinline__ Zone(const ZoneParams& zp, bool zoned) : z(zp), seed{0u, 0u} {
    if (zoned && zp.seeds != nullptr) {
      seed[0] = (uint64_t)zp.seeds[0];
      seed[1] = (uint64_t)zp.seeds[1];
    }
  }
  // The zoned state from the cell's new one and the state before the step.
  __device__ __forceinline__ float zone(int w, uint64_t off, float new_v, float old_v) const {
    if (z.p[w] == 0.f) return new_v;
    if (z.seeds != nullptr) return philox_uniform(seed[w], off) < z.p[w] ? old_v : new_v;
    return __fmaf_rn(z.p[w], old_v, __fmul_rn(z.q[w], new_v));
  }
  // The backward of zone() for the gradient d of the zoned state: d_new (to the cell's new state) and
  // d_old (to the state before the step), the masks regenerated.
  __device__ __forceinline__ void grad(int w, uint64_t off, float d, float& d_new, float& d_old) const {
    if (z.p[w] == 0.f) {
      d_new = d;
      d_old = 0.f;
    } else if (z.seeds != nullptr) {
      const bool keep = philox_uniform(seed[w], off) < z.p[w];
      d_new = keep ? 0.f : d;
      d_old = keep ? d : 0.f;
    } else {
      d_new = z.q[w] * d;
      d_old = z.p[w] * d;
    }
  }
};

// ---------------------------------------------------------------------------------------------
// The recurrent product of one 16-row pass: acc[mt][nt] (the m-tile x n-tile blocks of D) =
//   Σ over this warp's K blocks of A(rows of m-tile mt, block) · B(rows nt*8..nt*8+7, block)ᵀ
// Blocks: K is cut in blocks of EPP*4 elements (16 bytes per lane and row); block kb = warp + 8*i.
// Lane (g = lane / 4, t = lane % 4) holds, per block, the 16 bytes at K offset kb*kblock + t*EPP of
// A rows g and g+8 of every m-tile and of B row nt*8+g of every n-tile. The MMAs' K order inside a
// block is permuted the same way in A and B (k-step s reads words 2s, 2s+1 of each piece), which a
// dot product does not see, so one 16-byte load or cp.async serves two MMA k-steps.
// ---------------------------------------------------------------------------------------------
// The product is specialised on the plan's n-tiles per pass (NT, a kernel template parameter): no
// HMMA, copy or partial-sum store for an n-tile that does not exist. The ring's slot of a block is
// counted along (no division), the prologue commits only blocks that exist, and a lane's operand
// addresses are its row pointers, made once per pass, plus a block offset.
// FWD: the forward's block loop, as before the backward's changes: no prefetch of the next block's B
// pieces (run_ring; with few blocks the walked LSTM forward is longer with it), the refill a branch and
// the prologue's block 0 guarded like the others (with the backward's forms the forward's half kernels
// spilled 8-12 bytes on sm_80 and sm_90: they hold W_hh in registers).
template <typename T, int MODE, int MT, int NT, bool FWD = false>
struct RecProduct {
  static_assert(NT == 1 || NT == 2, "8-row n-tiles per pass: 1 or 2");
  static_assert(MT >= 1 && MT <= 4, "m-tiles: the gates of 16 units (forward) or 16/32 units (backward)");
  static constexpr int RB = reg_block_capacity(MODE, MT);  // blocks per warp held in registers (may be 0)
  static constexpr int EPP = 16 / (int)sizeof(T);          // elements per 16-byte piece
  static constexpr int KB = 4 * EPP;                       // K elements per block (the plan's kblock)
  static constexpr int KSTRIDE = kWarps * KB;              // K elements from a warp's block to its next

  uint4 w[RB > 0 ? RB : 1][MT][2];  // A pieces (rows g, g+8) of the warp's first RB blocks, for the whole sequence
  int kb_in;                        // the lane's blocks whose piece starts inside K: blocks 0 .. kb_in-1

  // 16 bytes of A or B elements as stored on chip: fp16/bf16 pairs, TF32-rounded fp32 (kTf32), or
  // plain fp32 (kTf32x3, split into TF32 hi + lo where the MMA reads it).
  __device__ static uint4 pack(const float* v) {
    if constexpr (MODE == kHalf) {
      return make_uint4(pack_pair(from_f<T>(v[0]), from_f<T>(v[1])), pack_pair(from_f<T>(v[2]), from_f<T>(v[3])),
                        pack_pair(from_f<T>(v[4]), from_f<T>(v[5])), pack_pair(from_f<T>(v[6]), from_f<T>(v[7])));
    } else if constexpr (MODE == kTf32) {
      return make_uint4(tf32_rna(v[0]), tf32_rna(v[1]), tf32_rna(v[2]), tf32_rna(v[3]));
    } else {
      return make_uint4(float_bits(v[0]), float_bits(v[1]), float_bits(v[2]), float_bits(v[3]));
    }
  }

  // The MMA operands of one block: k-step s reads words 2s, 2s+1 of each piece. A: {row g word 2s,
  // row g+8 word 2s, row g word 2s+1, row g+8 word 2s+1}; B: {word 2s, word 2s+1}. kTf32x3 carries
  // B's TF32 remainders (x = hi + lo up to 2^-22 relative) and splits A where the MMAs read it, one
  // k-step at a time (fewer live registers).
  struct AFrag {
    uint32_t hi[2][4];
  };
  struct BFrag {
    uint32_t hi[2][2], lo[2][2];
  };
  __device__ static void split(uint32_t raw, uint32_t& hi, uint32_t& lo) {
    if constexpr (MODE == kHalf) {
      hi = raw;
    } else {
      const float x = bits_float(raw);
      hi = MODE == kTf32x3 || MODE == kTf32 ? tf32_rna(x) : raw;
      if constexpr (MODE == kTf32x3) lo = tf32_rna(x - bits_float(hi));
    }
  }
  __device__ static AFrag a_frag(const uint4* a) {
    const uint32_t r0[4] = {a[0].x, a[0].y, a[0].z, a[0].w}, r8[4] = {a[1].x, a[1].y, a[1].z, a[1].w};
    AFrag f;
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      const uint32_t raw[4] = {r0[2 * s], r8[2 * s], r0[2 * s + 1], r8[2 * s + 1]};
#pragma unroll
      for (int e = 0; e < 4; ++e) f.hi[s][e] = raw[e];  // kTf32: rounded when loaded; kTf32x3: split in mma()
    }
    return f;
  }
  __device__ static BFrag b_frag(uint4 b) {
    const uint32_t raw[4] = {b.x, b.y, b.z, b.w};
    BFrag f;
#pragma unroll
    for (int s = 0; s < 2; ++s)
#pragma unroll
      for (int e = 0; e < 2; ++e) split(raw[2 * s + e], f.hi[s][e], f.lo[s][e]);
    return f;
  }
  // acc += A(block) · B(block)ᵀ for one m-tile and one n-tile: two MMA k-steps (three MMAs each in
  // kTf32x3, the small terms first).
  __device__ static void mma(float (&acc)[4], const AFrag& a, const BFrag& b) {
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      if constexpr (MODE == kTf32x3) {
        uint32_t hi[4], lo[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) split(a.hi[s][e], hi[e], lo[e]);
        Mma<T>::run(acc, lo[0], lo[1], lo[2], lo[3], b.hi[s][0], b.hi[s][1]);
        Mma<T>::run(acc, hi[0], hi[1], hi[2], hi[3], b.lo[s][0], b.lo[s][1]);
        Mma<T>::run(acc, hi[0], hi[1], hi[2], hi[3], b.hi[s][0], b.hi[s][1]);
      } else {
        Mma<T>::run(acc, a.hi[s][0], a.hi[s][1], a.hi[s][2], a.hi[s][3], b.hi[s][0], b.hi[s][1]);
      }
    }
  }

  // The warp's A pieces from A(row, k) (rows 0..16*MT-1 of the CTA's slice, 0 outside it): the
  // first RB blocks into registers, the others into w_smem (fragment order, one uint4 per lane).
  template <typename AElem>
  __device__ void load(const AElem& A, const Plan& P, uint4* w_smem) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int k_lane = warp * KB + t * EPP;
    kb_in = P.K > k_lane ? ceil_div(P.K - k_lane, KSTRIDE) : 0;
    for (int i = 0; i < P.blocks_per_warp; ++i) {
      const int k0 = k_lane + KSTRIDE * i;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          float v[EPP];
#pragma unroll
          for (int e = 0; e < EPP; ++e) v[e] = A(mt * 16 + g + 8 * half, k0 + e);
          const uint4 piece = pack(v);
          if (i < RB) {
            static_for<RB>([&](auto ii) {
              if (ii.value == i) w[ii.value][mt][half] = piece;  // a static register index
            });
          } else {
            w_smem[(((warp * P.smem_blocks + (i - RB)) * MT + mt) * 2 + half) * 32 + lane] = piece;
          }
        }
      }
    }
  }

  // The exchanged operand rows of one pass: row_base .. row_base + nrows - 1 of base (row stride ld).
  // vec_ok: 16-byte copies (K and the row stride multiples of EPP, base 16-byte aligned).
  struct Source {
    const T* base;  // row 0 of the operand (hist[t] or dgh[t])
    int ld, row_base, nrows;
    bool vec_ok;
  };
  // One lane's staging of one pass: its piece of block 0 in each n-tile's row (block b is KSTRIDE
  // elements further), and how many blocks of that row hold data (the rest are zero-filled).
  struct Lane {
    const T* piece[NT];
    int live[NT];
    uint4* slot0;  // ring slot 0, n-tile 0 of this lane; slot s, n-tile nt: + (s * NT + nt) * 32
    bool full;     // the ring holds kStages groups whenever a block is due (see wait_due)
  };
  __device__ Lane lane_of(uint4* stage_smem, const Source& src, const Plan& P) const {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    Lane l;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int r = nt * 8 + g;
      const bool row_ok = r < src.nrows;
      l.piece[nt] = src.base + (size_t)(src.row_base + (row_ok ? r : 0)) * src.ld + (warp * KB + t * EPP);
      l.live[nt] = row_ok ? kb_in : 0;
    }
    l.slot0 = stage_smem + warp * P.stage_slots * NT * 32 + lane;
    l.full = P.stage_slots == kStages || P.blocks_per_warp <= P.stage_slots;
    return l;
  }

  // One lane's cp.async copy of its pieces of block b (16 bytes per n-tile, zero-filled past K and
  // past the pass's rows; the address of a zero-filled piece is the lane's block 0, never read) into
  // ring slot `slot`. Without 16-byte alignment (K or the row stride not a multiple of EPP) the
  // pieces are loaded element by element instead. VEC: the caller knows src.vec_ok is true.
  // `go` false: nothing is copied (VEC: the copies are predicated off, no branch).
  template <bool VEC = false>
  __device__ static void issue(const Lane& l, const Source& src, int b, int slot, const Plan& P, bool go = true) {
    uint4* dst = l.slot0 + slot * (NT * 32);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const bool in = b < l.live[nt];
      if (VEC) {
        cp_async_16_if(go, dst + nt * 32, in ? l.piece[nt] + b * KSTRIDE : l.piece[nt], in);
      } else if (!go) {
      } else if (src.vec_ok) {
        cp_async_16(dst + nt * 32, in ? l.piece[nt] + b * KSTRIDE : l.piece[nt], in);
      } else {
        const int k0 = (int)((threadIdx.x >> 5) * KB + (threadIdx.x & 3) * EPP) + b * KSTRIDE;
        float v[EPP];
#pragma unroll
        for (int e = 0; e < EPP; ++e) v[e] = (in && k0 + e < P.K) ? to_f(load_cg(l.piece[nt] + b * KSTRIDE + e)) : 0.f;
        dst[nt * 32] = MODE == kHalf ? pack(v) : make_uint4(float_bits(v[0]), float_bits(v[1]), float_bits(v[2]),
                                                            float_bits(v[3]));
      }
    }
  }

  // acc += one block's product: B for each n-tile from its ring slot, then A of each m-tile
  // against them. `slot_read` runs once every B piece of the slot is in registers and an MMA has
  // consumed the last one (so the loads have completed: the slot may be refilled), between the
  // MMAs: the refill's copy and address math issue in the tensor pipe's gaps.
  template <typename F>
  __device__ static void block_product(float (&acc)[MT][NT][4], const uint4 (&a)[MT][2], const uint4* slot,
                                       F&& slot_read) {
    if constexpr (MODE == kTf32x3) {  // one n-tile's B (hi + lo) live at a time: fewer registers
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const BFrag b = b_frag(slot[nt * 32]);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma(acc[mt][nt], a_frag(a[mt]), b);
          if (nt == NT - 1 && mt == 0) slot_read();
        }
      }
    } else {
      uint4 bp[NT];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) bp[nt] = slot[nt * 32];
      product(acc, a, bp, slot_read);
    }
  }
  // acc += one block's product from B pieces already in registers (not kTf32x3); `slot_read` as above
  // (the pieces' loads have completed once an MMA consumed one).
  template <typename F>
  __device__ static void product(float (&acc)[MT][NT][4], const uint4 (&a)[MT][2], const uint4 (&bp)[NT],
                                 F&& slot_read) {
    BFrag b[NT];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) b[nt] = b_frag(bp[nt]);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const AFrag af = a_frag(a[mt]);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) mma(acc[mt][nt], af, b[nt]);
      if (mt == 0) slot_read();
    }
  }

  // Waits for the oldest copy still due. The prologue commits S = stage_slots groups (blocks
  // 0 .. S-1; the plan has S <= blocks per warp) and every block one more (a refill, or empty for
  // the last S blocks), so when block i is due, S - 1 later groups may still be in flight. When the
  // ring is full (S = kStages, or S = blocks per warp: no refills) the prologue pads its S groups
  // with kStages - S empty ones, so that count is kStages - 1 for every block of every plan: one
  // wait with a constant count. Only a ring the plan shortened for shared memory (S < kStages and
  // refills) takes the switch on S.
  template <bool FAST> __device__ static void wait_due(const Lane& l, const Plan& P) {
    if (FAST || l.full) {
      cp_async_wait<kStages - 1>();
      return;
    }
    switch (P.stage_slots - 1) {
      case 0: cp_async_wait<0>(); break;
      case 1: cp_async_wait<1>(); break;
      case 2: cp_async_wait<2>(); break;
      case 3: cp_async_wait<3>(); break;
      case 4: cp_async_wait<4>(); break;
      case 5: cp_async_wait<5>(); break;
      case 6: cp_async_wait<6>(); break;
      default: cp_async_wait<kStages - 1>(); break;
    }
  }

  // Block i in ring slot `slot` (i % S, kept by the caller without a division) once its copy has
  // landed: its product, and the slot takes block i + S once the MMAs have read it (among the
  // block's MMAs, see block_product; a lane reuses only its own slots, so no barrier is needed).
  template <bool FAST>
  __device__ static void step_block(float (&acc)[MT][NT][4], const uint4 (&a)[MT][2], const Lane& l,
                                    const Source& src, int i, int slot, const Plan& P) {
    wait_due<FAST>(l, P);
    block_product(acc, a, l.slot0 + slot * (NT * 32), [&] { refill<FAST>(l, src, i, slot, P); });
  }
  // The slot of block i takes block i + S (if any), and the group is committed.
  template <bool FAST>
  __device__ static void refill(const Lane& l, const Source& src, int i, int slot, const Plan& P) {
    const bool more = i + P.stage_slots < P.blocks_per_warp;
    if constexpr (MODE == kTf32x3 || FWD) {  // a branch (see FWD; 3xTF32's long blocks schedule better)
      if (more) issue<FAST>(l, src, i + P.stage_slots, slot, P);
    } else {
      issue<FAST>(l, src, i + P.stage_slots, slot, P, more);  // predicated copies, no branch
    }
    cp_async_commit();
  }

  // The ring's prologue of one pass: blocks 0 .. S-1 (S = stage_slots, 1 <= S <= kStages), one group
  // each (padded to kStages groups when the ring is full, see wait_due). Unrolled over kStages with the slot count as a guard, so the copies leave back to back with
  // their addresses made once (a runtime loop took ~90 clk a block on sm_90: the loop's branches and
  // the 16-byte path's test each trip).
  __device__ Lane begin(uint4* stage_smem, const Source& src, const Plan& P) const {
    const Lane l = lane_of(stage_smem, src, P);
    const int S = P.stage_slots;
    if (src.vec_ok && l.full) {
      if constexpr (!FWD) {  // S >= 1: block 0 first, with no test before it
        issue<true>(l, src, 0, 0, P);
        cp_async_commit();
      }
#pragma unroll
      for (int j = FWD ? 0 : 1; j < kStages; ++j) {
        if (j < S) issue<true>(l, src, j, j, P);
        cp_async_commit();  // padded to kStages groups (wait_due)
      }
    } else {
      int j = 0;
      do {  // S >= 1 blocks, one group each
        issue(l, src, j, j, P);
        cp_async_commit();
      } while (++j < S);
      if (l.full)
        for (; j < kStages; ++j) cp_async_commit();
    }
    return l;
  }

  // One pass's product over this warp's blocks, after begin(): a ring of stage_slots blocks in flight
  // per lane, block i computed once its own copy has landed. Blocks 0..RB-1 take A from registers, the
  // rest from w_smem.
  __device__ void run(float (&acc)[MT][NT][4], const Lane& l, const Source& src, const uint4* w_smem,
                      const Plan& P) const {
    if (l.full && src.vec_ok)
      run_ring<true>(acc, l, src, w_smem, P);
    else
      run_ring<false>(acc, l, src, w_smem, P);
  }
  // FAST: a full ring of 16-byte copies (every bench plan): one constant wait count and no
  // element-wise staging test in the block loop. Otherwise both are decided per block.
  template <bool FAST>
  __device__ void run_ring(float (&acc)[MT][NT][4], const Lane& l, const Source& src, const uint4* w_smem,
                           const Plan& P) const {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int S = P.stage_slots;
    int slot = 0;
    auto next_slot = [&] { slot = slot + 1 == S ? 0 : slot + 1; };
    // PREFETCH (the backward's full ring of 16-byte copies, not kTf32x3): block i + 1's B pieces are loaded from
    // their slot before block i's MMAs, so no shared-memory latency sits between two blocks' MMAs. In
    // a full ring block b is copy group b, and slot i + 1 is not slot i (S > 1 whenever there is a
    // block i + 1), so one wait with one less group in flight covers it. At the last block the load
    // reads a slot no block uses (nothing uses the values).
    constexpr bool PREFETCH = FAST && MODE != kTf32x3 && !FWD;
    uint4 bn[NT];
    auto load_b = [&](int s, uint4(&bp)[NT]) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) bp[nt] = l.slot0[(s * NT + nt) * 32];
    };
    if constexpr (PREFETCH) {
      cp_async_wait<kStages - 1>();
      load_b(0, bn);
    }
    auto block = [&](const uint4(&a)[MT][2], int i) {
      if constexpr (PREFETCH) {
        uint4 bc[NT];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) bc[nt] = bn[nt];
        cp_async_wait<kStages - 2>();
        load_b(slot + 1 == S ? 0 : slot + 1, bn);
        product(acc, a, bc, [&] { refill<FAST>(l, src, i, slot, P); });
      } else {
        step_block<FAST>(acc, a, l, src, i, slot, P);
      }
      next_slot();
    };
    static_for<RB>([&](auto ic) {
      constexpr int i = decltype(ic)::value;
      if (i > 0 && i >= P.blocks_per_warp) return;  // every warp has block 0 (zero past K): its MMAs always run
      block(w[i], i);
    });
    // A of block i in shared memory: w_smem[((warp * smem_blocks + i - RB) * MT + mt) * 2 + half][lane]
    const uint4* wa = w_smem + warp * P.smem_blocks * MT * 2 * 32 + lane;
    auto smem_block = [&](int i) {
      uint4 a[MT][2];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int half = 0; half < 2; ++half) a[mt][half] = wa[((i - RB) * MT + mt) * 2 * 32 + half * 32];
      block(a, i);
    };
    if constexpr (RB == 0) {  // every warp has block 0: at least one iteration, so its MMAs always run
      int i = 0;
      do smem_block(i); while (++i < P.blocks_per_warp);
    } else {
      for (int i = RB; i < P.blocks_per_warp; ++i) smem_block(i);
    }
  }

  // One pass: the product over this warp's blocks, its partial sums stored for every thread to reduce
  // once the barrier at the end has passed. `behind_copies` runs once the ring's first copies are on
  // their way (the kernel's loads for a later phase: they do not delay the operand).
  template <typename F>
  __device__ void pass_product(float* part, uint4* stage_smem, const Source& src, const uint4* w_smem,
                               const Plan& P, F&& behind_copies) const {
    const Lane l = begin(stage_smem, src, P);
    behind_copies();
    float acc[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[mt][nt][r] = 0.f;
    run(acc, l, src, w_smem, P);
    store_partials(part, acc);
    __syncthreads();
  }

  // Partial sums, so that a thread gathers its D element's sums from a warp with the fewest loads.
  // BY_GATE (2 or 4 m-tiles): part[warp][reg][n-tile][lane] holds the MT sums of one element (one
  // per m-tile) as one 8- or 16-byte vector, stored per (reg, n-tile) as 32 consecutive vectors; a
  // thread loads vector tid of each warp. Otherwise (1 or 3 m-tiles, which no vector load fits
  // without padding the buffer): part[warp][m-tile][n-tile][lane] holds a lane's 4 accumulator
  // registers as one float4; a thread loads word tid of each (warp, m-tile). cell_thread maps tid
  // to that element; stores and loads are conflict-free either way. With one n-tile, the threads of
  // rows 8..15 read words nobody wrote and use nothing: those rows are past the CTA's.
  static constexpr bool BY_GATE = MT == 2 || MT == 4;
  struct alignas(BY_GATE ? 4 * MT : 4) GateVec {  // used only when BY_GATE
    float v[MT];
  };
  __device__ static void store_partials(float* part, const float (&acc)[MT][NT][4]) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if constexpr (BY_GATE) {
      GateVec* pv = reinterpret_cast<GateVec*>(part);
#pragma unroll
      for (int e = 0; e < 4; ++e)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          GateVec x;
#pragma unroll
          for (int m = 0; m < MT; ++m) x.v[m] = acc[m][nt][e];
          pv[((warp * 4 + e) * 2 + nt) * 32 + lane] = x;
        }
    } else {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
          reinterpret_cast<float4*>(part)[((warp * MT + mt) * 2 + nt) * 32 + lane] =
              make_float4(acc[mt][nt][0], acc[mt][nt][1], acc[mt][nt][2], acc[mt][nt][3]);
    }
  }

  // Σ over the 8 warps of the calling thread's D element (cell_thread) of every m-tile. BY_GATE: one
  // vector load per warp, then per m-tile the 8 terms added pairwise (3 dependent adds). Otherwise
  // reduce_tile per m-tile.
  __device__ static void reduce(const float* part, float (&out)[MT]) {
    if constexpr (BY_GATE) {
      float x[kWarps][MT];
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const GateVec v = reinterpret_cast<const GateVec*>(part)[w * kThreads + threadIdx.x];
#pragma unroll
        for (int m = 0; m < MT; ++m) x[w][m] = v.v[m];
      }
#pragma unroll
      for (int m = 0; m < MT; ++m) {
#pragma unroll
        for (int half = kWarps / 2; half > 0; half /= 2)
#pragma unroll
          for (int w = 0; w < half; ++w) x[w][m] += x[w + half][m];
        out[m] = x[0][m];
      }
    } else {
#pragma unroll
      for (int m = 0; m < MT; ++m) out[m] = reduce_tile(part, m);
    }
  }

  // Σ over the 8 warps of m-tile m's element when not BY_GATE: one load per warp, each added as it
  // arrives (the loads issue back to back and the m-tiles' chains interleave).
  __device__ static float reduce_tile(const float* part, int m) {
    static_assert(!BY_GATE, "BY_GATE sums are reduced for every m-tile at once");
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) s += part[(w * MT + m) * kThreads + threadIdx.x];
    return s;
  }

  // The (row of an m-tile, batch row of the pass) a thread owns in the elementwise phases: the D
  // element whose partial sums it reads, in mma m16n8's accumulator layout (regs 0-1 row lane/4, regs
  // 2-3 row lane/4 + 8, column 2 * (lane % 4) + reg % 2): tid = reg * 64 + n-tile * 32 + lane when
  // BY_GATE (a warp owns 8 units of 4 rows), else tid = n-tile * 128 + lane * 4 + reg.
  // r: 0..15 (a unit within a 16-unit group); n: 0..15 (a row of the pass). With one n-tile the
  // threads of n-tile 1 own rows 8..15 only: whole warps either way.
  struct CellThread {
    int r, n;
  };
  __device__ static CellThread cell_thread() {
    const int tid = threadIdx.x;
    const int reg = BY_GATE ? tid >> 6 : tid & 3, nt = BY_GATE ? (tid >> 5) & 1 : tid >> 7;
    const int lane = BY_GATE ? tid & 31 : (tid >> 2) & 31;
    return {(lane >> 2) + 8 * (reg >> 1), nt * 8 + 2 * (lane & 3) + (reg & 1)};
  }
};

// The grid barrier between forward steps, with `between` (the next step's input loads) after this
// CTA's arrival and before its wait, so the loads fly through the barrier. Not before the arrival:
// its release (in thread 0) waits for that thread's outstanding memory operations, loads included,
// and would take their latency. barrier_arrive/barrier_wait where cooperative_groups has them (CUDA
// 12.x and later), else grid.sync() and then the loads.
template <typename G, typename = void> struct HasSplitBarrier : std::false_type {};
template <typename G>
struct HasSplitBarrier<G, std::void_t<decltype(std::declval<const G&>().barrier_arrive())>> : std::true_type {};

template <typename F> __device__ __forceinline__ void grid_barrier_around(const cg::grid_group& grid, F&& between) {
  if constexpr (HasSplitBarrier<cg::grid_group>::value) {
    auto token = grid.barrier_arrive();
    between();
    grid.barrier_wait(std::move(token));
  } else {
    grid.sync();
    between();
  }
}

template <typename T> __device__ __forceinline__ bool aligned16(const T* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------
// ZO: zoneout (p.zo) applied to the new states, a constexpr case of the same step body (without it the
// kernel is the plain one: no zoneout code at all).
template <int CELL, typename T, int MODE, int NT, bool ZO>
__global__ void __launch_bounds__(kThreads, 1) rnn_fwd_persistent_kernel(const FwdParams p) {
#if FUSEDRNN_KERNEL_BODY
  constexpr int NG = n_gates(CELL), NS = n_saved(CELL), MT = NG, U = kFwdUnits;
  using R = RecProduct<T, MODE, MT, NT, true>;
  const Plan& P = p.plan;

  FUSEDRNN_DYNAMIC_SMEM(smem);
  uint4* w_smem = reinterpret_cast<uint4*>(smem + P.w_off);
  uint4* stage = reinterpret_cast<uint4*>(smem + P.stage_off);
  float* part = reinterpret_cast<float*>(smem + P.part_off);
  float* h_s = reinterpret_cast<float*>(smem + P.state_off);  // [kMaxRows][U] fp32 states of the CTA's (row, unit) pairs
  float* c_s = h_s + kMaxRows * U;
  int* len_s = reinterpret_cast<int*>(smem + P.len_off);  // valid steps per row

  const int H = P.H, B = P.B, G = NG * H, steps = p.T;
  const int ug = blockIdx.x / P.n_bg, bg = blockIdx.x % P.n_bg;
  const int j0 = ug * U, row0 = bg * P.rows, my_rows = min(P.rows, B - row0);
  const typename R::CellThread ct = R::cell_thread();
  const int j = j0 + ct.r;
  const bool unit_ok = j < H;
  const T* w_hh = static_cast<const T*>(p.w_hh);
  const T* gx = static_cast<const T*>(p.gx);
  const T* residual = static_cast<const T*>(p.residual);
  T* y = static_cast<T*>(p.y);
  T* hist = static_cast<T*>(p.hist);

  // A row mt*16 + r = W_hh row of gate mt, unit j0 + r.
  R rec;
  rec.load([&](int row, int k) -> float {
    const int jj = j0 + row % 16;
    return (jj < H && k < H) ? to_f(w_hh[(size_t)((row / 16) * H + jj) * H + k]) : 0.f;
  }, P, w_smem);
  float bias[NG];
#pragma unroll
  for (int g = 0; g < NG; ++g) bias[g] = (p.b_hh != nullptr && unit_ok) ? to_f(static_cast<const T*>(p.b_hh)[g * H + j]) : 0.f;
  for (int q = 0; q < P.passes; ++q) {
    const int r = q * kPassRows + ct.n;
    if (unit_ok && r < my_rows) {
      h_s[r * U + ct.r] = p.h_state[(size_t)(row0 + r) * H + j];
      if constexpr (CELL == 1) c_s[r * U + ct.r] = p.c_state[(size_t)(row0 + r) * H + j];
    }
  }
  for (int r = threadIdx.x; r < P.rows; r += kThreads)
    len_s[r] = r >= my_rows ? 0 : p.lengths != nullptr ? (int)min((int64_t)steps, p.lengths[row0 + r]) : steps;
  const bool vec_ok = H % R::EPP == 0 && aligned16(hist);
  [[maybe_unused]] const Zone zo(p.zo, ZO);  // used by the ZO kernels only
  __syncthreads();

  // The thread's cell inputs of one (step, pass), loaded one pass ahead of their use, in place once
  // the previous ones are consumed (the same registers: nothing copies them before the barrier).
  struct Inputs {
    uint32_t gx[NG], res;  // raw bits
  };
  auto load_inputs = [&](int t, int q, Inputs& in) {
    const int b = row0 + q * kPassRows + ct.n;
    const bool ok = unit_ok && q * kPassRows + ct.n < my_rows;
#pragma unroll
    for (int g = 0; g < NG; ++g) in.gx[g] = ok ? load_bits(gx + ((size_t)t * B + b) * G + g * H + j) : 0u;
    in.res = (ok && residual != nullptr) ? load_bits(residual + ((size_t)t * B + b) * H + j) : 0u;
  };
  Inputs in;
  load_inputs(p.reverse ? steps - 1 : 0, 0, in);

  cg::grid_group grid = cg::this_grid();
  int* ready = p.ready != nullptr ? p.ready + bg * P.n_ug : nullptr;  // this batch group's flags
  for (int s = 0; s < steps; ++s) {
    const int t = p.reverse ? steps - 1 - s : s;
    const int t_next = p.reverse ? t - 1 : t + 1;
    const bool last = s + 1 == steps;
    // At least one pass (do-while: no path from the step's start to its boundary skips the MMAs, which
    // the codegen check of hidden loads relies on).
    int q = 0;
    do {
      const int rb = q * kPassRows;
      if (ready != nullptr && q == 0 && s > 0) wait_ready(ready, P.n_ug, s);  // hist[t] of every unit group
      const typename R::Source src{hist + (size_t)t * B * H, H, row0 + rb, min(kPassRows, my_rows - rb), vec_ok};
      rec.pass_product(part, stage, src, w_smem, P, [] {});

      const int r = rb + ct.n;
      if (unit_ok && r < my_rows) {
        const int b = row0 + r;
        float gh[NG];
        if constexpr (R::BY_GATE) {
          R::reduce(part, gh);
#pragma unroll
          for (int g = 0; g < NG; ++g) gh[g] += bias[g];
        } else {  // each gate's sum and bias as the sum arrives (on sm_90 the GRU's step schedules shorter)
#pragma unroll
          for (int g = 0; g < NG; ++g) gh[g] = R::reduce_tile(part, g) + bias[g];
        }
        const size_t row = (size_t)t * B + b;  // (t, b)
        const bool valid = t < len_s[r];
        const float h_prev = h_s[r * U + ct.r];
        float h_new = h_prev;
        float* sv = p.saved != nullptr ? p.saved + row * (NS * H) : nullptr;
        if (!valid && sv) {  // nothing to save past a row's length: zeros, so the op's output is defined
#pragma unroll
          for (int g = 0; g < NS; ++g) sv[g * H + j] = 0.f;
        }
        if (valid) {
          if constexpr (CELL == 0) {
            // r = σ(gx_r + gh_r), z = σ(gx_z + gh_z), n = tanh(gx_n + r * gh_n), h = (1-z) n + z h_prev
            const float rg = sigmoid_fast(bits_to_f<T>(in.gx[0]) + gh[0]);
            const float zg = sigmoid_fast(bits_to_f<T>(in.gx[1]) + gh[1]);
            const float ng = tanh_fast(bits_to_f<T>(in.gx[2]) + rg * gh[2]);
            h_new = (1.f - zg) * ng + zg * h_prev;
            if (sv) {
              sv[j] = rg;
              sv[H + j] = zg;
              sv[2 * H + j] = ng;
              sv[3 * H + j] = gh[2];
            }
          } else if constexpr (is_elman(CELL)) {
            // h = act(gx + gh): tanh, or relu (NaN propagates, as torch's)
            h_new = elman_act<CELL>(bits_to_f<T>(in.gx[0]) + gh[0]);
            if (sv) sv[j] = h_new;  // the derivative is a function of h' alone
          } else {
            const float ig = sigmoid_fast(bits_to_f<T>(in.gx[0]) + gh[0]);
            const float fg = sigmoid_fast(bits_to_f<T>(in.gx[1]) + gh[1]);
            const float gg = tanh_fast(bits_to_f<T>(in.gx[2]) + gh[2]);
            const float og = sigmoid_fast(bits_to_f<T>(in.gx[3]) + gh[3]);
            const float c_prev = c_s[r * U + ct.r];
            float c_new = lstm_c_new(ig, fg, gg, c_prev);
            h_new = og * tanh_fast(c_new);  // h~ from the cell's own c~
            if constexpr (ZO) c_new = zo.zone(1, ((uint64_t)t * B + b) * H + j, c_new, c_prev);
            c_s[r * U + ct.r] = c_new;
            if (sv) {
              sv[j] = ig;
              sv[H + j] = fg;
              sv[2 * H + j] = gg;
              sv[3 * H + j] = og;
              sv[4 * H + j] = c_prev;
            }
          }
          if constexpr (ZO) h_new = zo.zone(0, ((uint64_t)t * B + b) * H + j, h_new, h_prev);
          h_s[r * U + ct.r] = h_new;
        }
        const float y_val = !valid ? 0.f : residual != nullptr ? h_new + bits_to_f<T>(in.res) : h_new;
        y[row * H + j] = from_f<T>(y_val);
        if (!last) exchange_store(hist + ((size_t)t_next * B + b) * H + j, from_f<T>(h_new));
      }
      if (q + 1 < P.passes) load_inputs(t, q + 1, in);
      __syncthreads();  // the next pass or step rewrites the partial sums (unconditional: uniform control flow)
    } while (++q < P.passes);
    // The step boundary publishes hist[t_next] (every thread's stores precede the barrier above); the
    // next step's first inputs are loaded after the release, which would otherwise wait for them.
    if (!last) {
      if (ready != nullptr) {
        publish_ready(ready + ug, s + 1);
        load_inputs(t_next, 0, in);
      } else {
        grid_barrier_around(grid, [&] { load_inputs(t_next, 0, in); });
      }
    }
  }
  for (int q = 0; q < P.passes; ++q) {
    const int r = q * kPassRows + ct.n;
    if (unit_ok && r < my_rows) {
      p.h_state[(size_t)(row0 + r) * H + j] = h_s[r * U + ct.r];
      if constexpr (CELL == 1) p.c_state[(size_t)(row0 + r) * H + j] = c_s[r * U + ct.r];
    }
  }
#else
  __trap();  // built for an arch below sm_80: the host side never launches this
#endif
}

// ---------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------
// ZO: the backward of the forward's zoneout (p.zo), the masks regenerated (a constexpr case, as there).
template <int CELL, typename T, int MODE, int MT, int NT, bool ZO>
__global__ void __launch_bounds__(kThreads, 1) rnn_bwd_persistent_kernel(const BwdParams p) {
#if FUSEDRNN_KERNEL_BODY
  constexpr int NG = n_gates(CELL), NS = n_saved(CELL), U = 16 * MT;
  using R = RecProduct<T, MODE, MT, NT>;
  const Plan& P = p.plan;

  FUSEDRNN_DYNAMIC_SMEM(smem);
  uint4* w_smem = reinterpret_cast<uint4*>(smem + P.w_off);
  uint4* stage = reinterpret_cast<uint4*>(smem + P.stage_off);
  float* part = reinterpret_cast<float*>(smem + P.part_off);
  float* dh_s = reinterpret_cast<float*>(smem + P.state_off);  // [kMaxRows][U] fp32 carries dh, dc
  float* dc_s = dh_s + kMaxRows * U;
  int* len_s = reinterpret_cast<int*>(smem + P.len_off);

  const int H = P.H, B = P.B, G = NG * H, steps = p.T;
  const int ug = blockIdx.x / P.n_bg, bg = blockIdx.x % P.n_bg;
  const int j0 = ug * U, row0 = bg * P.rows, my_rows = min(P.rows, B - row0);
  const typename R::CellThread ct = R::cell_thread();
  const T* w_hh = static_cast<const T*>(p.w_hh);
  const T* dy = static_cast<const T*>(p.dy);
  const T* hist = static_cast<const T*>(p.hist);
  T* dgh = static_cast<T*>(p.dgh);
  T* dgx_n = static_cast<T*>(p.dgx_n);

  // A row u = the CTA's unit j0 + u: W_hh column j0 + u, K = G (so D = dgates · W_hh[:, units]).
  R rec;
  rec.load([&](int row, int k) -> float {
    const int jj = j0 + row;
    return (jj < H && k < G) ? to_f(w_hh[(size_t)k * H + jj]) : 0.f;
  }, P, w_smem);
  // f(shared-memory index, global index) for each (row, unit) pair of the CTA this thread owns.
  auto each_state = [&](auto&& f) {
    for (int q = 0; q < P.passes; ++q) {
      const int r = q * kPassRows + ct.n;
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        const int u = m * 16 + ct.r, j = j0 + u;
        if (j < H && r < my_rows) f(r * U + u, (size_t)(row0 + r) * H + j);
      }
    }
  };
  each_state([&](int i, size_t g) {
    dh_s[i] = p.dh[g];
    if constexpr (CELL == 1) dc_s[i] = p.dc[g];
  });
  for (int r = threadIdx.x; r < P.rows; r += kThreads)
    len_s[r] = r >= my_rows ? 0 : p.lengths != nullptr ? (int)min((int64_t)steps, p.lengths[row0 + r]) : steps;
  const bool vec_ok = G % R::EPP == 0 && aligned16(dgh);
  [[maybe_unused]] const Zone zo(p.zo, ZO);  // used by the ZO kernels only
  __syncthreads();

  // Phase A's inputs for the thread's (row, unit) pairs of one (step, pass), as raw bits.
  struct Inputs {
    uint32_t dy[MT], h_prev[MT];  // h_prev: GRU
    float sv[MT][NS];
  };
  auto load_inputs = [&](int t, int q, Inputs& in) {
    const int b = row0 + q * kPassRows + ct.n;
    const bool row_ok = q * kPassRows + ct.n < my_rows;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      const int j = j0 + m * 16 + ct.r;
      const bool ok = row_ok && j < H;
      const size_t row = (size_t)t * B + b;
      in.dy[m] = ok ? load_bits(dy + row * H + j) : 0u;
#pragma unroll
      for (int g = 0; g < NS; ++g) in.sv[m][g] = ok ? p.saved[row * (NS * H) + g * H + j] : 0.f;
      in.h_prev[m] = (ok && CELL == 0) ? load_bits(hist + row * H + j) : 0u;
    }
  };
  // Phase A of step t for the rows of pass q: dgates of this CTA's units from dy, the saved
  // activations and the fp32 carries dh, dc (which phase B of the later step just completed for these
  // rows, in this thread) -> dgh[t] (and dgx_n); dh keeps the direct path, dc the cell path.
  auto phase_a = [&](int t, int q, const Inputs& in) {
    const int r = q * kPassRows + ct.n, b = row0 + r;
    if (r >= my_rows) return;
    const size_t row = (size_t)t * B + b;
    const bool valid = t < len_s[r];
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      const int u = m * 16 + ct.r, j = j0 + u;
      if (j >= H) continue;
      T* dg = dgh + row * G;
      if (!valid) {  // state carried: dh, dc pass through unchanged; no gate gradient
#pragma unroll
        for (int g = 0; g < NG; ++g) exchange_store(dg + g * H + j, from_f<T>(0.f));
        if constexpr (CELL == 0) dgx_n[row * H + j] = from_f<T>(0.f);
        continue;
      }
      float dh = dh_s[r * U + u] + bits_to_f<T>(in.dy[m]);  // d(h_t); with zoneout, of the zoned h_t
      [[maybe_unused]] float dh_old = 0.f;  // zoneout: the part of d(h_t) that goes to h_{t-1} directly
      [[maybe_unused]] const uint64_t off = ((uint64_t)t * B + b) * H + j;
      if constexpr (ZO) zo.grad(0, off, dh, dh, dh_old);  // dh -> d(h~_t), the cell's own new h
      if constexpr (CELL == 0) {
        const float rg = in.sv[m][0], zg = in.sv[m][1], ng = in.sv[m][2], gh_n = in.sv[m][3];
        const float h_prev = bits_to_f<T>(in.h_prev[m]);
        const float dn = dh * (1.f - zg) * (1.f - ng * ng);  // d(pre-tanh of n)
        const float dz = dh * (h_prev - ng) * zg * (1.f - zg);
        const float dr = dn * gh_n * rg * (1.f - rg);
        exchange_store(dg + j, from_f<T>(dr));
        exchange_store(dg + H + j, from_f<T>(dz));
        exchange_store(dg + 2 * H + j, from_f<T>(dn * rg));  // gh_n enters as r * gh_n
        dgx_n[row * H + j] = from_f<T>(dn);
        if constexpr (ZO) {
          dh_s[r * U + u] = dh * zg + dh_old;
        } else {
          dh_s[r * U + u] = dh * zg;  // direct path; phase B adds dgates · W_hh
        }
      } else if constexpr (is_elman(CELL)) {
        exchange_store(dg + j, from_f<T>(dh * elman_act_grad<CELL>(in.sv[m][0])));  // d(pre-activation)
        if constexpr (ZO) {
          dh_s[r * U + u] = dh_old;
        } else {
          dh_s[r * U + u] = 0.f;  // h_prev reaches h only through the gate
        }
      } else {
        const float ig = in.sv[m][0], fg = in.sv[m][1], gg = in.sv[m][2], og = in.sv[m][3], c_prev = in.sv[m][4];
        const float tc = tanh_fast(lstm_c_new(ig, fg, gg, c_prev));  // tanh of the cell's own c~_t
        float dc_in = dc_s[r * U + u];  // d(c_t); with zoneout, of the zoned c_t
        [[maybe_unused]] float dc_old = 0.f;
        if constexpr (ZO) zo.grad(1, off, dc_in, dc_in, dc_old);  // -> d(c~_t) through c_t, and to c_{t-1}
        const float dc = dc_in + dh * og * (1.f - tc * tc);
        exchange_store(dg + j, from_f<T>(dc * gg * ig * (1.f - ig)));
        exchange_store(dg + H + j, from_f<T>(dc * c_prev * fg * (1.f - fg)));
        exchange_store(dg + 2 * H + j, from_f<T>(dc * ig * (1.f - gg * gg)));
        exchange_store(dg + 3 * H + j, from_f<T>(dh * tc * og * (1.f - og)));
        if constexpr (ZO) {
          dc_s[r * U + u] = dc * fg + dc_old;
          dh_s[r * U + u] = dh_old;
        } else {
          dc_s[r * U + u] = dc * fg;
          dh_s[r * U + u] = 0.f;  // h_prev reaches h only through the gates
        }
      }
    }
  };

  // Phase A of the first step, then per step: grid barrier (dgh[t] complete), and for each pass
  // phase B of step t (dh += dgh[t] · W_hh[:, units]) followed at once by phase A of the next step
  // for the same rows, whose inputs were loaded before the pass's MMA. With ready flags, the CTA
  // publishes n + 1 once dgh of the n-th step it handles is written (the first by the prologue), and
  // waits for its batch group's flags instead of the barrier.
  const int t_first = p.reverse ? 0 : steps - 1;
  Inputs in;
  for (int q = 0; q < P.passes; ++q) {
    load_inputs(t_first, q, in);
    phase_a(t_first, q, in);
  }
  cg::grid_group grid = cg::this_grid();
  int* ready = p.ready != nullptr ? p.ready + bg * P.n_ug : nullptr;  // this batch group's flags
  if (ready != nullptr) {
    __syncthreads();  // every thread's dgh stores of the first step precede the release
    publish_ready(ready + ug, 1);
  }
  for (int s = steps - 1; s >= 0; --s) {  // forward step index, walked backwards
    const int t = p.reverse ? steps - 1 - s : s;
    const int t_prev = p.reverse ? t + 1 : t - 1;  // the step phase A handles next
    const int n = steps - 1 - s;                   // steps handled before this one
    if (ready != nullptr) {
      wait_ready(ready, P.n_ug, n + 1);  // dgh[t] of every unit group of the batch group
    } else {
      grid.sync();  // dgh[t] complete for every unit
    }
    for (int q = 0; q < P.passes; ++q) {
      const int rb = q * kPassRows;
      const typename R::Source src{dgh + (size_t)t * B * G, G, row0 + rb, min(kPassRows, my_rows - rb), vec_ok};
      // the next phase A's inputs (HBM) leave behind the operand's first copies (L2)
      rec.pass_product(part, stage, src, w_smem, P, [&] {
        if (s > 0) load_inputs(t_prev, q, in);
      });
      const int r = rb + ct.n;
      if (r < my_rows && j0 + ct.r < H) {  // else none of the thread's units is inside H
        float d[MT];
        R::reduce(part, d);
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          const int u = m * 16 + ct.r;
          if (j0 + u < H) dh_s[r * U + u] += d[m];
        }
      }
      if (s > 0) phase_a(t_prev, q, in);
      __syncthreads();  // the next pass or step rewrites the partial sums (unconditional: uniform control flow)
    }
    if (ready != nullptr && s > 0) publish_ready(ready + ug, n + 2);  // dgh[t_prev]: stores precede the barrier above
  }
  each_state([&](int i, size_t g) {
    p.dh[g] = dh_s[i];
    if constexpr (CELL == 1) p.dc[g] = dc_s[i];
  });
#else
  __trap();
#endif
}

// ---------------------------------------------------------------------------------------------
// Instantiations, selected by dtype and math mode, n-tiles per pass (1 or 2), m-tiles for the
// backward, and zoneout (ZO); the ring's slot count is the plan's (a guard of RecProduct::begin's unrolled prologue)
// ---------------------------------------------------------------------------------------------
#if defined(FUSEDRNN_EMULATE)
// The emulator runs a kernel through one signature: entry(&params).
template <int CELL, typename T, int MODE, int NT, bool ZO> void emu_fwd_entry(const void* params) {
  rnn_fwd_persistent_kernel<CELL, T, MODE, NT, ZO>(*static_cast<const FwdParams*>(params));
}
template <int CELL, typename T, int MODE, int MT, int NT, bool ZO> void emu_bwd_entry(const void* params) {
  rnn_bwd_persistent_kernel<CELL, T, MODE, MT, NT, ZO>(*static_cast<const BwdParams*>(params));
}
#endif

template <int CELL, typename T, int MODE, int NT, bool ZO> const void* fwd_kernel_ptr() {
#if defined(FUSEDRNN_EMULATE)
  return reinterpret_cast<const void*>(&emu_fwd_entry<CELL, T, MODE, NT, ZO>);
#else
  return reinterpret_cast<const void*>(&rnn_fwd_persistent_kernel<CELL, T, MODE, NT, ZO>);
#endif
}

template <int CELL, typename T, int MODE, int MT, int NT, bool ZO> const void* bwd_kernel_ptr() {
#if defined(FUSEDRNN_EMULATE)
  return reinterpret_cast<const void*>(&emu_bwd_entry<CELL, T, MODE, MT, NT, ZO>);
#else
  return reinterpret_cast<const void*>(&rnn_bwd_persistent_kernel<CELL, T, MODE, MT, NT, ZO>);
#endif
}

template <int CELL, int NT, bool ZO> const void* select_fwd_kernel_nt(DType d, int mode) {
  switch (d) {
    case DType::F16: return fwd_kernel_ptr<CELL, __half, kHalf, NT, ZO>();
    case DType::BF16: return fwd_kernel_ptr<CELL, __nv_bfloat16, kHalf, NT, ZO>();
    case DType::F32:
      return mode == kTf32 ? fwd_kernel_ptr<CELL, float, kTf32, NT, ZO>()
                           : fwd_kernel_ptr<CELL, float, kTf32x3, NT, ZO>();
  }
  return nullptr;
}

template <int CELL, bool ZO> const void* select_fwd_kernel_zo(DType d, int mode, int ntiles) {
  return ntiles == 2 ? select_fwd_kernel_nt<CELL, 2, ZO>(d, mode) : select_fwd_kernel_nt<CELL, 1, ZO>(d, mode);
}

template <int CELL> const void* select_fwd_kernel(DType d, int mode, int ntiles, bool zo) {
  return zo ? select_fwd_kernel_zo<CELL, true>(d, mode, ntiles) : select_fwd_kernel_zo<CELL, false>(d, mode, ntiles);
}

template <int CELL, int MT, int NT, bool ZO> const void* select_bwd_kernel_mt(DType d, int mode) {
  switch (d) {
    case DType::F16: return bwd_kernel_ptr<CELL, __half, kHalf, MT, NT, ZO>();
    case DType::BF16: return bwd_kernel_ptr<CELL, __nv_bfloat16, kHalf, MT, NT, ZO>();
    case DType::F32:
      return mode == kTf32 ? bwd_kernel_ptr<CELL, float, kTf32, MT, NT, ZO>()
                           : bwd_kernel_ptr<CELL, float, kTf32x3, MT, NT, ZO>();
  }
  return nullptr;
}

template <int CELL, bool ZO> const void* select_bwd_kernel_zo(DType d, int mode, int mtiles, int ntiles) {
  if (ntiles == 2) {
    return mtiles == 2 ? select_bwd_kernel_mt<CELL, 2, 2, ZO>(d, mode) : select_bwd_kernel_mt<CELL, 1, 2, ZO>(d, mode);
  }
  return mtiles == 2 ? select_bwd_kernel_mt<CELL, 2, 1, ZO>(d, mode) : select_bwd_kernel_mt<CELL, 1, 1, ZO>(d, mode);
}

template <int CELL> const void* select_bwd_kernel(DType d, int mode, int mtiles, int ntiles, bool zo) {
  return zo ? select_bwd_kernel_zo<CELL, true>(d, mode, mtiles, ntiles)
            : select_bwd_kernel_zo<CELL, false>(d, mode, mtiles, ntiles);
}

}  // namespace fusedrnn
