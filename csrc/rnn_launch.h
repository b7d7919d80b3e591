// Host-side interface of the persistent GRU/LSTM recurrence kernels: the launch plan (grid, units
// and batch rows per CTA, which W_hh fragments stay in registers, the shared-memory layout), the
// parameter structs and the launch entry points. Pure arithmetic and no torch here: the kernels
// (*.cu) build standalone (tests/test_cuda_codegen.py), and bench/model_cuda.py repeats make_plan
// in Python for the latency model (tests compare the two).
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

// The cells: GRU, LSTM, and the Elman RNN (torch.nn.RNN) with nonlinearity tanh or relu. Everything
// cell-specific in the kernels (gates, saved activations, the cell math and its backward) is a
// constexpr case of CELL; the plan's slice sizes follow from n_gates.
enum class Cell : int { GRU = 0, LSTM = 1, RNN_TANH = 2, RNN_RELU = 3 };
FUSEDRNN_HD constexpr bool is_elman(int cell) { return cell == 2 || cell == 3; }
enum class DType : int { F16 = 0, BF16 = 1, F32 = 2 };
// How the recurrent product is computed on tensor cores (fp32 accumulation in every mode).
enum MathMode : int {
  kHalf = 0,    // fp16/bf16 operands, mma.m16n8k16
  kTf32 = 1,    // fp32 operands rounded to TF32, mma.m16n8k8 (when torch allows TF32 for matmuls)
  kTf32x3 = 2,  // fp32 operands split into TF32 hi + lo, three mma.m16n8k8 (lo·hi + hi·lo + hi·hi): fp32 accuracy
};

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kPassRows = 16;  // batch rows per pass through the recurrent product (two 8-row MMA n-tiles)
// Batch rows per CTA at most: the fp32 states of the CTA's (row, unit) pairs live in shared memory,
// sized for this many rows whatever the batch, so the hidden-size limits do not depend on B. Larger
// batches than 64 rows x the batch groups a hidden size leaves room for are left to cuDNN, which is
// built for them.
constexpr int kMaxRows = 64;
// K blocks each lane keeps in flight through its cp.async ring (a pass with more blocks per warp
// reuses the slots): at most kStages, fewer when shared memory is short, but at least enough that the
// CTA has kInFlightBytes in flight (the L2 round trip at the SM's fill rate, 64 B/clk x ~350 clk).
constexpr int kStages = 8;
constexpr int kInFlightBytes = 24 * 1024;
constexpr int kFwdUnits = 16;  // hidden units per CTA in the forward: m-tile g holds gate g of the 16 units
// Registers per thread for W_hh fragments held for the whole sequence; the rest of the CTA's slice
// is in shared memory. 96, and for kTf32x3 (which splits operands into hi + lo registers where the
// MMAs read them, and whose MMAs take longer than reading W from shared memory) 48 at 1 m-tile, 32 at
// 2, 24 at 3-4: every kernel stays within 255 registers with no spills on sm_80 and sm_90 (ptxas
// report, tests/test_cuda_codegen.py).
FUSEDRNN_HD constexpr int w_regs(int mode, int mtiles) {
  return mode == 2 ? (mtiles >= 3 ? 24 : mtiles == 2 ? 32 : 48) : 96;
}

FUSEDRNN_HD constexpr int n_gates(int cell) { return cell == 0 ? 3 : cell == 1 ? 4 : 1; }
// fp32 values saved per (t, b, unit) for the backward: GRU r,z,n,(W_hn h+b_hn); LSTM i,f,g,o,c_prev;
// Elman RNN h' (its derivative: 1 - h'^2 for tanh, h' > 0 for relu).
FUSEDRNN_HD constexpr int n_saved(int cell) { return cell == 0 ? 4 : cell == 1 ? 5 : 1; }
FUSEDRNN_HD constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }
FUSEDRNN_HD constexpr int round_up(int x, int m) { return ceil_div(x, m) * m; }
FUSEDRNN_HD constexpr size_t round_up_sz(size_t x, size_t m) { return (x + m - 1) / m * m; }
// W_hh words per (block, m-tile, lane): two 16-byte pieces (rows g and g+8 of the m-tile).
constexpr int kWWords = 8;
// K blocks (16 bytes per lane and row) of a warp that an instantiation keeps in registers.
FUSEDRNN_HD constexpr int reg_block_capacity(int mode, int mtiles) { return w_regs(mode, mtiles) / (mtiles * kWWords); }

// The launch plan of one kernel for one problem.
//
// The recurrent product of a CTA is D (rows x batch) = A (rows x K) · Bᵀ, A the CTA's slice of W_hh
// (forward: the 16 units' rows of every gate, K = H; backward: the units' columns of W_hh, K = G),
// B the exchanged operand (forward: h_prev, backward: dgates[t]) for the CTA's batch rows. K is cut
// in blocks of 16 bytes per lane and row (32 fp16/bf16 or 16 fp32 elements: two MMA k-steps); block
// kb belongs to warp kb % 8, so the 8 warps split K and their fp32 partial sums meet in shared memory.
struct Plan {
  int cell, backward, mode, elem;  // elem: bytes per element of the input dtype
  int H, B, K;
  int units;        // hidden units per CTA
  int mtiles;       // 16-row MMA tiles of the CTA's A slice
  int n_ug, n_bg;   // unit groups x batch groups = grid
  int grid;
  int rows;         // batch rows per CTA (a multiple of 8)
  int passes;       // 16-row passes through the product per step
  int pass_ntiles;  // 8-row n-tiles per pass (1 or 2)
  int kblock;       // K elements per block
  int nblocks;      // ceil(K / kblock)
  int blocks_per_warp;
  int reg_blocks;   // blocks per warp whose A fragments live in registers
  int smem_blocks;  // the warp's other blocks: A fragments in shared memory
  int stage_slots;  // ring slots per lane (and warp): blocks in flight, <= min(blocks_per_warp, kStages)
  size_t w_off, stage_off, part_off, state_off, len_off, bytes;  // shared-memory layout (bytes)
};

FUSEDRNN_HD inline int math_mode(DType d, bool tf32) { return d == DType::F32 ? (tf32 ? kTf32 : kTf32x3) : kHalf; }
FUSEDRNN_HD inline int elem_bytes(DType d) { return d == DType::F32 ? 4 : 2; }

// The shared-memory layout for `slots` ring slots per lane.
FUSEDRNN_HD inline void lay_out(Plan& p, int slots) {
  const int states = p.cell == 1 ? 2 : 1;  // h (dh), and c (dc) for the LSTM
  p.stage_slots = slots;
  p.w_off = 0;
  p.stage_off = round_up_sz((size_t)kWarps * p.smem_blocks * p.mtiles * kWWords * 32 * 4, 128);
  p.part_off = round_up_sz(p.stage_off + (size_t)kWarps * slots * p.pass_ntiles * 32 * 16, 128);
  p.state_off = round_up_sz(p.part_off + (size_t)kWarps * p.mtiles * 2 * 32 * 16, 128);
  p.len_off = round_up_sz(p.state_off + (size_t)states * kMaxRows * p.units * 4, 128);
  p.bytes = round_up_sz(p.len_off + (size_t)kMaxRows * 4, 128);
}

// The plan for `units` hidden units per CTA. Batch groups fill the SMs the unit groups leave free
// (fewer rows per CTA: less of the operand to pull and a shorter product per step), each at least
// 8 rows (one MMA n-tile). The ring takes kStages slots, fewer (down to kInFlightBytes in flight)
// when the layout would not fit in smem_optin.
FUSEDRNN_HD inline Plan plan_for_units(Cell cell, bool backward, DType dtype, bool tf32, int H, int B, int units,
                                       int num_sms, size_t smem_optin) {
  Plan p{};
  p.cell = (int)cell;
  p.backward = backward;
  p.mode = math_mode(dtype, tf32);
  p.elem = elem_bytes(dtype);
  const int ng = n_gates(p.cell);
  p.H = H;
  p.B = B;
  p.K = backward ? ng * H : H;
  p.units = units;
  p.mtiles = backward ? units / 16 : ng * units / 16;
  p.n_ug = ceil_div(H, units);
  const int bg_max = p.n_ug >= num_sms ? 1 : num_sms / p.n_ug;
  const int bg_want = B > 8 ? ceil_div(B, 8) : 1;
  const int bg = bg_want < bg_max ? bg_want : bg_max;
  p.rows = round_up(B > 0 ? ceil_div(B, bg) : 8, 8);
  p.n_bg = B > 0 ? ceil_div(B, p.rows) : 1;
  p.grid = p.n_ug * p.n_bg;
  p.passes = ceil_div(p.rows, kPassRows);
  p.pass_ntiles = p.rows >= kPassRows ? 2 : 1;
  p.kblock = 64 / p.elem;
  p.nblocks = ceil_div(p.K, p.kblock);
  p.blocks_per_warp = ceil_div(p.nblocks, kWarps);
  const int cap = reg_block_capacity(p.mode, p.mtiles);
  p.reg_blocks = p.blocks_per_warp < cap ? p.blocks_per_warp : cap;
  p.smem_blocks = p.blocks_per_warp - p.reg_blocks;
  const int most = p.blocks_per_warp < kStages ? p.blocks_per_warp : kStages;
  const int enough = ceil_div(kInFlightBytes, kWarps * p.pass_ntiles * 32 * 16);
  const int least = most < enough ? most : enough;
  int slots = most;
  lay_out(p, slots);
  while (p.bytes > smem_optin && slots > least) lay_out(p, --slots);
  return p;
}

FUSEDRNN_HD inline bool plan_fits(const Plan& p, int num_sms, size_t smem_optin) {
  return p.grid <= num_sms && p.bytes <= smem_optin && p.rows <= kMaxRows;
}

// The plan the launch uses: the forward takes 16 units per CTA; the backward 32 when the batch
// leaves room for batch groups (half the unit groups: half the dgates traffic through L2) and the
// slice fits, else 16. plan_fits says whether the grid, shared memory and rows per CTA fit.
FUSEDRNN_HD inline Plan make_plan(Cell cell, bool backward, DType dtype, bool tf32, int H, int B, int num_sms,
                                  size_t smem_optin) {
  if (backward && B > 8) {
    const Plan wide = plan_for_units(cell, backward, dtype, tf32, H, B, 32, num_sms, smem_optin);
    if (plan_fits(wide, num_sms, smem_optin)) return wide;
  }
  return plan_for_units(cell, backward, dtype, tf32, H, B, backward ? 16 : kFwdUnits, num_sms, smem_optin);
}

// Pointers are to contiguous tensors; "scalar" means the input dtype (fp16, bf16 or fp32).
// Zoneout of one launch (the ZO kernels only; fusedrnn/zoneout.py): p and 1 - p per state (h, c; c
// for the LSTM), and the (2,) int64 seeds (h, c) in device memory in training, null in evaluation
// (m = p). A state with p = 0 is not zoned.
struct ZoneParams {
  float p[2];
  float q[2];              // 1 - p, rounded from double as the reference's (1 - p)
  const int64_t* seeds;    // (2,) or null (evaluation)
};

struct FwdParams {
  Plan plan;
  int T;
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
  int* ready;              // (n_bg, n_ug) ready flags, zeroed; null: a grid barrier per step (ptx.cuh)
  ZoneParams zo;           // read by the ZO kernels only (last: the other fields keep their offsets)
};

struct BwdParams {
  Plan plan;
  int T;
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
  int* ready;              // (n_bg, n_ug) ready flags, zeroed; null: a grid barrier per step (ptx.cuh)
  ZoneParams zo;           // read by the ZO kernels only (last: the other fields keep their offsets)
};

// What the device allows for a plan (launch.cu).
struct Occupancy {
  int blocks_per_sm = 0;  // co-resident CTAs per SM at the plan's shared memory (0: does not fit)
  int num_sms = 0;
  int max_smem_optin = 0;
  bool cooperative = false;  // device supports cooperative launch
};

// Kernel entry pointers, one file per (cell, direction) so that the instantiations compile in
// parallel. The backward has one instantiation per m-tile count (16 or 32 units per CTA). zo: the
// zoneout instantiation (template parameter ZO of the same kernel), else the plain one.
const void* gru_fwd_kernel(DType d, int mode, int ntiles, bool zo);
const void* lstm_fwd_kernel(DType d, int mode, int ntiles, bool zo);
const void* gru_bwd_kernel(DType d, int mode, int mtiles, int ntiles, bool zo);
const void* lstm_bwd_kernel(DType d, int mode, int mtiles, int ntiles, bool zo);
// The Elman RNN cells (cell 2 tanh, 3 relu), both nonlinearities in one file per direction.
const void* elman_fwd_kernel(int cell, DType d, int mode, int ntiles, bool zo);
const void* elman_bwd_kernel(int cell, DType d, int mode, int mtiles, int ntiles, bool zo);

inline const void* rnn_kernel(const Plan& p, DType d, bool zo = false) {
  if (p.backward) {
    return p.cell == 0   ? gru_bwd_kernel(d, p.mode, p.mtiles, p.pass_ntiles, zo)
           : p.cell == 1 ? lstm_bwd_kernel(d, p.mode, p.mtiles, p.pass_ntiles, zo)
                         : elman_bwd_kernel(p.cell, d, p.mode, p.mtiles, p.pass_ntiles, zo);
  }
  return p.cell == 0   ? gru_fwd_kernel(d, p.mode, p.pass_ntiles, zo)
         : p.cell == 1 ? lstm_fwd_kernel(d, p.mode, p.pass_ntiles, zo)
                       : elman_fwd_kernel(p.cell, d, p.mode, p.pass_ntiles, zo);
}

// launch.cu: device properties, occupancy (cached), cooperative launch, and the synchronisation-only
// latency floor kernel (a grid barrier per step, or with ready_flags the flags' publish and wait).
cudaError_t device_limits(int* num_sms, int* smem_optin);
cudaError_t occupancy(const void* kernel, size_t smem, Occupancy* occ);
cudaError_t launch_cooperative(const void* kernel, const Plan& plan, void* params, cudaStream_t stream);
// flags: grid zeroed ints for the ready-flag variant, or null for grid barriers.
cudaError_t barrier_floor(int steps, int grid, int* flags, cudaStream_t stream, float* ms);

}  // namespace fusedrnn
