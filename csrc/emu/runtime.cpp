// The emulator's scheduler: runs a cooperative launch of a csrc/ kernel on the CPU, one coroutine
// per CUDA thread, all on the calling OS thread. See cuda_emu.h for the model.
#include "runtime.h"

// A coroutine switch is a stack switch. On x86-64 it is six pushes, a stack-pointer swap and six
// pops (the System V callee-saved registers; the emulated kernels leave the floating-point control
// state alone, so it is not saved). Elsewhere it is swapcontext, which also saves the signal mask
// with a system call per switch: the emulator switches tens of millions of times per test run.
#if defined(__x86_64__) && !defined(FUSEDRNN_EMU_UCONTEXT)
#define FUSEDRNN_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <deque>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "../rnn_launch.h"
#include "cuda_emu.h"

namespace fusedrnn_emu {
namespace {

constexpr size_t kStackBytes = 64 * 1024;
constexpr int kWarpLanes = 32;
constexpr int kExchangeSlots = 4;

enum class St : unsigned char { Ready, AtBlock, AtGrid, AtWarp, Done, Failed };

// One cp.async in flight: what lands where, and the source bytes at issue (they must not change).
struct AsyncCopy {
  unsigned char* dst;
  const unsigned char* src;
  int src_bytes;
  int group;  // -1 until cp.async.commit_group closes the group
  unsigned char snapshot[16];
};

#if FUSEDRNN_EMU_ASM_SWITCH
// Saves the callee-saved registers on the current stack, stores the stack pointer in *save, switches
// to the stack `next` (saved by an earlier switch, or built by start_stack) and returns on it.
extern "C" void fusedrnn_emu_switch(void** save, void* next);
asm(R"(
  .text
  .p2align 4
  .globl fusedrnn_emu_switch
  .hidden fusedrnn_emu_switch
  .type fusedrnn_emu_switch, @function
fusedrnn_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fusedrnn_emu_switch, .-fusedrnn_emu_switch
)");
struct Context {
  void* sp = nullptr;
};
#else
using Context = ucontext_t;
#endif

struct Thread {
  Context ctx;
  St st = St::Ready;
  int block = 0, tid = 0;
  const char* site_file = nullptr;  // the __syncthreads() / grid.sync() it waits at
  int site_line = 0;
  WarpOp op{};                 // the warp-collective operation it waits at
  std::vector<AsyncCopy> copies;  // cp.async in flight, in issue order
  int next_group = 0;             // id the next cp.async.commit_group gives its group
};

// Who wrote a byte pair of global memory that other threads read during the launch, and when: the
// writer's CTA epoch (its completed __syncthreads() and grid.sync() calls) at the write.
struct Stamp {
  int block, tid, epoch;
};

struct Launch {
  void (*entry)(const void*) = nullptr;
  const void* params = nullptr;
  int grid = 0, threads = 0;
  size_t smem = 0, smem_guard = 0, smem_stride = 0;  // CTA region: [guard][smem][guard + padding]
  std::vector<Thread> th;
  std::unique_ptr<char[]> stacks;
  std::vector<unsigned char> smem_mem;
  unsigned char* smem_base = nullptr;  // 128-byte aligned start of block 0's region
  std::vector<void*> exchange;  // (block, warp, lane, slot)
  Context sched;
  Thread* cur = nullptr;
  std::string error;
  // Visibility (cuda_emu.h). A write by CTA X at epoch e is visible to every thread once e < floor[X]
  // (a grid.sync since), to a thread of another CTA once e < know[thread][X] (acquired through ready
  // flags), to a thread of X once e < epoch[X] (a __syncthreads() since) or if it wrote it itself.
  std::vector<int> epoch, floor;
  std::vector<int> arrived;  // per CTA: its epoch at grid_group::barrier_arrive(), -1 if not split
  std::unordered_map<uintptr_t, Stamp> stamps;  // by byte-pair address
  bool flags_used = false;  // know/pending exist once a flag is touched
  std::vector<int> know, pending;  // [thread][CTA]; pending: relaxed flag reads not yet fenced
  std::unordered_map<const int*, std::vector<int>> released;  // a flag's releaser's knowledge at its latest release
  int64_t idle_polls = 0;  // flag polls since anything else progressed (deadlock detection)
};

Launch* g_launch = nullptr;
Schedule g_schedule = Schedule::InOrder;
uint64_t g_seed = 0;
Stats g_stats;
std::string g_last_error;

struct Guard {
  const unsigned char* p;
  size_t n;
  std::string name;
};
std::vector<Guard> g_guards;

bool same_site(const Thread& a, const Thread& b) {
  return a.site_line == b.site_line && std::strcmp(a.site_file, b.site_file) == 0;
}

// From a thread to the scheduler, and from the scheduler into a thread.
void to_scheduler(Launch& L) {
#if FUSEDRNN_EMU_ASM_SWITCH
  fusedrnn_emu_switch(&L.cur->ctx.sp, L.sched.sp);
#else
  swapcontext(&L.cur->ctx, &L.sched);
#endif
}
void to_thread(Launch& L, Thread* t) {
#if FUSEDRNN_EMU_ASM_SWITCH
  fusedrnn_emu_switch(&L.sched.sp, t->ctx.sp);
#else
  swapcontext(&L.sched, &t->ctx);
#endif
}

void yield(St st) {
  Launch& L = *g_launch;
  L.cur->st = st;
  to_scheduler(L);
}

void thread_main() {
  Launch& L = *g_launch;
  L.entry(L.params);
  if (!L.cur->copies.empty()) fail("cp.async issued and never waited for (cp.async.wait_group / wait_all)");
  L.cur->st = St::Done;
#if FUSEDRNN_EMU_ASM_SWITCH
  to_scheduler(L);  // never resumed: the stack is abandoned
  std::abort();
#endif
  // with ucontext, returning resumes the scheduler (uc_link)
}

// Prepares a thread's stack so that the first switch to it enters thread_main: the switch pops six
// registers and returns into thread_main with the stack as a call would leave it (16-byte aligned
// before the call, so 8 mod 16 at entry).
void start_stack(Launch& L, Thread& t, char* stack, size_t bytes) {
#if FUSEDRNN_EMU_ASM_SWITCH
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t(15);
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;  // thread_main's return address: it never returns
  *--sp = reinterpret_cast<void*>(&thread_main);
  for (int i = 0; i < 6; ++i) *--sp = nullptr;  // r15 r14 r13 r12 rbx rbp
  t.ctx.sp = sp;
  (void)L;
#else
  getcontext(&t.ctx);
  t.ctx.uc_stack.ss_sp = stack;
  t.ctx.uc_stack.ss_size = bytes;
  t.ctx.uc_link = &L.sched;
  makecontext(&t.ctx, thread_main, 0);
#endif
}

std::string describe(const Launch& L) {
  std::ostringstream os;
  int shown = 0;
  for (int b = 0; b < L.grid && shown < 4; ++b) {
    int n[6] = {0, 0, 0, 0, 0, 0};
    for (int t = 0; t < L.threads; ++t) n[(int)L.th[(size_t)b * L.threads + t].st]++;
    if (n[(int)St::AtGrid] == L.threads) continue;
    os << " block " << b << ": " << n[(int)St::AtBlock] << " at __syncthreads, " << n[(int)St::AtGrid]
       << " at grid.sync, " << n[(int)St::AtWarp] << " at a warp-collective op, " << n[(int)St::Done] << " exited;";
    ++shown;
  }
  return os.str();
}

constexpr int kSyncwarpOp = 32;  // WarpOp kinds: 10+/20+ mma.sync, 32 __syncwarp

// Joins the knowledge of threads [first, first + n) (a __syncwarp or __syncthreads completed).
void join_knowledge(Launch& L, size_t first, int n) {
  if (!L.flags_used) return;
  const size_t g = (size_t)L.grid;
  int* rows = L.know.data() + first * g;
  for (size_t x = 0; x < g; ++x) {
    int m = 0;
    for (int i = 0; i < n; ++i) m = std::max(m, rows[(size_t)i * g + x]);
    for (int i = 0; i < n; ++i) rows[(size_t)i * g + x] = m;
  }
}

void block_barrier_done(Launch& L, int block) {
  L.epoch[block]++;
  L.idle_polls = 0;
  join_knowledge(L, (size_t)block * L.threads, L.threads);
}

// Orders a group of threads that became ready together (the launch's threads, or the participants
// of a barrier that just completed) and queues them: at the back (breadth-first: everybody advances
// one barrier interval at a time) or, for the eager schedules, at the front (depth-first: the released
// threads run ahead as far as they can before anybody else moves, which exposes a missing barrier as a
// read of memory that is not written yet).
void enqueue(std::deque<Thread*>& q, std::vector<Thread*>& group, std::mt19937_64& rng) {
  const bool reversed = g_schedule == Schedule::Reversed;
  const bool shuffled = g_schedule == Schedule::Shuffled || g_schedule == Schedule::EagerShuffled;
  const bool eager = g_schedule == Schedule::Eager || g_schedule == Schedule::EagerShuffled;
  for (Thread* t : group) t->st = St::Ready;
  if (reversed) std::reverse(group.begin(), group.end());
  if (shuffled) std::shuffle(group.begin(), group.end(), rng);
  if (eager) {
    q.insert(q.begin(), group.begin(), group.end());
  } else {
    q.insert(q.end(), group.begin(), group.end());
  }
  group.clear();
}

// Runs threads until all have exited; a barrier is released the moment its last participant arrives.
bool run(Launch& L) {
  std::mt19937_64 rng(g_seed);
  const int warps = L.threads / kWarpLanes;
  const size_t total = L.th.size();
  std::vector<int> at_block(L.grid, 0), at_warp((size_t)L.grid * warps, 0);
  size_t at_grid = 0, done = 0;
  std::deque<Thread*> q;
  std::vector<Thread*> group;
  for (auto& t : L.th) group.push_back(&t);
  enqueue(q, group, rng);
  while (!q.empty()) {
    Thread* t = q.front();
    q.pop_front();
    L.cur = t;
    to_thread(L, t);
    g_stats.switches++;
    Thread* blk = &L.th[(size_t)t->block * L.threads];
    switch (t->st) {
      case St::Failed:
        return false;
      case St::Done:
        ++done;
        L.idle_polls = 0;
        break;
      case St::AtBlock:
        if (++at_block[t->block] == L.threads) {
          at_block[t->block] = 0;
          for (int i = 1; i < L.threads; ++i)
            if (!same_site(blk[i], blk[0])) {
              L.error = "block " + std::to_string(t->block) +
                        ": threads are waiting at different __syncthreads() calls (a barrier in divergent code)";
              return false;
            }
          for (int i = 0; i < L.threads; ++i) group.push_back(blk + i);
          block_barrier_done(L, t->block);
          enqueue(q, group, rng);
          g_stats.block_barriers++;
        }
        break;
      case St::AtWarp: {
        const int w = t->tid / kWarpLanes;
        if (++at_warp[(size_t)t->block * warps + w] == kWarpLanes) {
          at_warp[(size_t)t->block * warps + w] = 0;
          const Thread* lanes = blk + w * kWarpLanes;
          for (int l = 1; l < kWarpLanes; ++l)
            if (!(lanes[l].op == lanes[0].op)) {
              L.error = "block " + std::to_string(t->block) + ", warp " + std::to_string(w) +
                        ": lanes are in different warp-collective operations (or mma shapes/types)";
              return false;
            }
          for (int l = 0; l < kWarpLanes; ++l) group.push_back(blk + w * kWarpLanes + l);
          if (lanes[0].op.kind == kSyncwarpOp) join_knowledge(L, (size_t)(lanes - L.th.data()), kWarpLanes);
          enqueue(q, group, rng);
          g_stats.warp_barriers++;
        }
        break;
      }
      case St::AtGrid:
        if (++at_grid == total) {
          at_grid = 0;
          for (const auto& th : L.th)
            if (!same_site(th, L.th[0])) {
              L.error = "threads are waiting at different grid.sync() calls";
              return false;
            }
          for (auto& th : L.th) group.push_back(&th);
          // A CTA barrier for every CTA too. Every write before grid.sync() becomes visible to all;
          // after a split barrier, only the writes before barrier_arrive().
          for (int b = 0; b < L.grid; ++b) {
            L.floor[b] = std::max(L.floor[b], L.arrived[b] >= 0 ? L.arrived[b] : L.epoch[b] + 1);
            L.arrived[b] = -1;
            ++L.epoch[b];
          }
          L.idle_polls = 0;
          enqueue(q, group, rng);
          g_stats.grid_barriers++;
        }
        break;
      case St::Ready:  // polled a flag: runs again after the others
        q.push_back(t);
        break;
    }
  }
  if (done == total) return true;
  L.error = "deadlock: threads wait at barriers that the others never reach;" + describe(L);
  return false;
}

bool check_guards(const Launch& L) {
  for (int b = 0; b < L.grid; ++b) {
    const unsigned char* base = L.smem_base + (size_t)b * L.smem_stride;
    for (size_t i = 0; i < L.smem_stride; ++i) {
      if (i >= L.smem_guard && i < L.smem_guard + L.smem) continue;
      if (base[i] != kGuardByte) {
        g_last_error = "shared memory written out of bounds in block " + std::to_string(b) +
                       (i < L.smem_guard ? " (before the buffer)" : " (past the end of the buffer)");
        return false;
      }
    }
  }
  for (const Guard& g : g_guards)
    for (size_t i = 0; i < g.n; ++i)
      if (g.p[i] != kGuardByte) {
        g_last_error = "global buffer written out of bounds: " + g.name;
        return false;
      }
  return true;
}

}  // namespace

uint3 thread_idx() { return make_uint3((unsigned)g_launch->cur->tid, 0, 0); }
uint3 block_idx() { return make_uint3((unsigned)g_launch->cur->block, 0, 0); }
unsigned lane_id() { return (unsigned)g_launch->cur->tid % kWarpLanes; }

unsigned char* dynamic_smem() {
  Launch& L = *g_launch;
  return L.smem_base + (size_t)L.cur->block * L.smem_stride + L.smem_guard;
}

void syncthreads(const char* file, int line) {
  g_launch->cur->site_file = file;
  g_launch->cur->site_line = line;
  yield(St::AtBlock);
}
void grid_sync(const char* file, int line) {
  g_launch->cur->site_file = file;
  g_launch->cur->site_line = line;
  yield(St::AtGrid);
}
void grid_arrive(const char* file, int line) {
  syncthreads(file, line);  // barrier_arrive() begins with the CTA barrier
  g_launch->arrived[g_launch->cur->block] = g_launch->epoch[g_launch->cur->block];
}
void warp_sync(const WarpOp& op) {
  g_launch->cur->op = op;
  yield(St::AtWarp);
}

void* const* warp_exchange(void* const* mine, int n, const WarpOp& op) {
  Launch& L = *g_launch;
  if (n > kExchangeSlots) fail("warp_exchange: too many pointers");
  const int warp = L.cur->tid / kWarpLanes;
  void** table = L.exchange.data() + ((size_t)L.cur->block * (L.threads / kWarpLanes) + warp) * kWarpLanes * kExchangeSlots;
  // Rows packed with stride n: lane l's pointers are table[l * n .. l * n + n - 1].
  for (int i = 0; i < n; ++i) table[lane_id() * n + i] = mine[i];
  warp_sync(op);
  return table;
}

void fail(const char* what) {
  if (g_launch == nullptr || g_launch->cur == nullptr) {
    std::fprintf(stderr, "fusedrnn emulator: %s outside a launch\n", what);
    std::abort();
  }
  Launch& L = *g_launch;
  char where[64];  // no heap object may live on this stack: it is abandoned, never unwound
  std::snprintf(where, sizeof where, " (block %d, thread %d)", L.cur->block, L.cur->tid);
  L.error.assign(what);
  L.error.append(where);
  yield(St::Failed);
  std::abort();  // never resumed
}

// ---------------------------------------------------------------------------------------------
// Visibility between CTAs, ready flags, __syncwarp
// ---------------------------------------------------------------------------------------------

namespace {
size_t cur_index(const Launch& L) { return (size_t)(L.cur - L.th.data()); }

void use_flags(Launch& L) {
  if (L.flags_used) return;
  L.flags_used = true;
  L.know.assign(L.th.size() * (size_t)L.grid, 0);
  L.pending.assign(L.th.size() * (size_t)L.grid, 0);
}

// Polls past which, with no barrier, release or thread exit in between, the launch is a deadlock:
// every thread left polls flags that nobody will release.
int64_t poll_limit(const Launch& L) { return 64 * (int64_t)L.th.size() + 100000; }
}  // namespace

void exchange_store(const void* p, int bytes) {
  Launch& L = *g_launch;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const Stamp st{L.cur->block, L.cur->tid, L.epoch[L.cur->block]};
  for (uintptr_t u = a & ~uintptr_t(1); u < a + (uintptr_t)bytes; u += 2) L.stamps[u] = st;
}

void check_read(const void* p, int bytes) {
  Launch& L = *g_launch;
  if (L.stamps.empty() || bytes <= 0) return;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const Thread& me = *L.cur;
  for (uintptr_t u = a & ~uintptr_t(1); u < a + (uintptr_t)bytes; u += 2) {
    const auto it = L.stamps.find(u);
    if (it == L.stamps.end()) continue;
    const Stamp& w = it->second;
    bool visible;
    if (w.block == me.block) {
      visible = w.tid == me.tid || w.epoch < L.epoch[w.block];
    } else {
      const int known = L.flags_used ? L.know[cur_index(L) * L.grid + w.block] : 0;
      visible = w.epoch < std::max(L.floor[w.block], known);
    }
    if (!visible) {
      static char what[320];  // no heap object on this stack: fail() abandons it
      std::snprintf(what, sizeof what,
                    "global memory read before the write is visible to this thread: block %d thread %d wrote it, "
                    "and no grid.sync(), __syncthreads() (same block) or released -> acquired ready flag orders "
                    "that write before this read (a GPU may return stale data)",
                    w.block, w.tid);
      fail(what);
    }
  }
}

int flag_load(const int* p, bool acquire) {
  Launch& L = *g_launch;
  use_flags(L);
  if (++L.idle_polls > poll_limit(L))
    fail("deadlock: threads poll ready flags that nobody releases (no barrier, release or exit for too long)");
  const int v = *reinterpret_cast<const volatile int*>(p);
  const auto it = L.released.find(p);
  if (it != L.released.end()) {  // the knowledge of the release whose value was just read
    int* mine = (acquire ? L.know.data() : L.pending.data()) + cur_index(L) * L.grid;
    for (int x = 0; x < L.grid; ++x) mine[x] = std::max(mine[x], it->second[(size_t)x]);
  }
  yield(St::Ready);
  return v;
}

void fence_acq_rel() {
  Launch& L = *g_launch;
  if (!L.flags_used) return;
  int* know = L.know.data() + cur_index(L) * L.grid;
  const int* pending = L.pending.data() + cur_index(L) * L.grid;
  for (int x = 0; x < L.grid; ++x) know[x] = std::max(know[x], pending[x]);
}

void flag_release(int* p, int value) {
  Launch& L = *g_launch;
  use_flags(L);
  const int* know = L.know.data() + cur_index(L) * L.grid;
  std::vector<int>& rel = L.released[p];
  rel.resize((size_t)L.grid);
  for (int x = 0; x < L.grid; ++x) rel[(size_t)x] = std::max(know[x], L.floor[x]);
  // The releaser's own CTA: writes before its last completed __syncthreads() (not writes of other
  // threads after it, which the release does not order).
  rel[(size_t)L.cur->block] = std::max(rel[(size_t)L.cur->block], L.epoch[L.cur->block]);
  *reinterpret_cast<volatile int*>(p) = value;
  L.idle_polls = 0;
}

void syncwarp() { warp_sync({kSyncwarpOp}); }

// ---------------------------------------------------------------------------------------------
// cp.async
// ---------------------------------------------------------------------------------------------

namespace {
void land(const AsyncCopy& c) {
  if (std::memcmp(c.snapshot, c.src, (size_t)c.src_bytes) != 0)
    fail("cp.async: its global source changed between issue and completion");
  std::memcpy(c.dst, c.src, (size_t)c.src_bytes);
  std::memset(c.dst + c.src_bytes, 0, (size_t)(16 - c.src_bytes));  // the zero-fill part
}
}  // namespace

void cp_async(void* smem_dst, const void* gmem_src, int src_bytes) {
  Launch& L = *g_launch;
  auto* dst = static_cast<unsigned char*>(smem_dst);
  const unsigned char* base = dynamic_smem();
  if (dst < base || dst + 16 > base + L.smem) fail("cp.async: destination outside the CTA's shared memory");
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0) fail("cp.async: destination not 16-byte aligned");
  if (src_bytes < 0 || src_bytes > 16) fail("cp.async: source size must be 0..16 bytes");
  if (src_bytes > 0 && reinterpret_cast<uintptr_t>(gmem_src) % 16 != 0) fail("cp.async: source not 16-byte aligned");
  if (src_bytes > 0) check_read(gmem_src, src_bytes);  // the read is the issuing thread's, ordered at issue
  AsyncCopy c{dst, static_cast<const unsigned char*>(gmem_src), src_bytes, -1, {}};
  std::memcpy(c.snapshot, c.src, (size_t)src_bytes);
  std::memset(dst, kUnwrittenByte, 16);  // undefined until the copy completes
  L.cur->copies.push_back(c);
}

void cp_async_commit() {
  Thread& t = *g_launch->cur;
  for (AsyncCopy& c : t.copies)
    if (c.group < 0) c.group = t.next_group;
  ++t.next_group;  // an empty group is a group too
}

void cp_async_wait(int pending_groups) {
  Thread& t = *g_launch->cur;
  const int limit = pending_groups < 0 ? INT_MAX : t.next_group - pending_groups;
  size_t kept = 0;  // compacted in place: no heap object on this (possibly abandoned) coroutine stack
  for (size_t i = 0; i < t.copies.size(); ++i) {
    const AsyncCopy c = t.copies[i];
    if (pending_groups < 0 || (c.group >= 0 && c.group < limit)) {
      land(c);
    } else {
      t.copies[kept++] = c;
    }
  }
  t.copies.resize(kept);
}

// ---------------------------------------------------------------------------------------------
// mma.sync
// ---------------------------------------------------------------------------------------------

namespace {
float half_of(uint32_t word, int e, MmaType type) {
  const uint16_t bits = (uint16_t)(word >> (16 * e));
  if (type == MmaType::F16) {
    __half h;
    std::memcpy(&h, &bits, 2);
    return __half2float(h);
  }
  __nv_bfloat16 b;
  std::memcpy(&b, &bits, 2);
  return __bfloat162float(b);
}
float tf32_of(uint32_t word) {
  word &= 0xffffe000u;  // the tensor cores read 10 mantissa bits and ignore the rest
  float f;
  std::memcpy(&f, &word, 4);
  return f;
}
}  // namespace

void mma_sync(float* d, const uint32_t* a, const uint32_t* b, MmaType type) {
  void* mine[2] = {const_cast<uint32_t*>(a), const_cast<uint32_t*>(b)};
  void* const* table = warp_exchange(mine, 2, {10 + (int)type});
  auto A = [&](int row, int k) -> float {
    if (type == MmaType::TF32) {
      const int reg = (row >= 8) + 2 * (k >= 4), lane = (row % 8) * 4 + k % 4;
      return tf32_of(static_cast<const uint32_t*>(table[2 * lane])[reg]);
    }
    const int reg = (row >= 8) + 2 * (k >= 8), lane = (row % 8) * 4 + (k % 8) / 2;
    return half_of(static_cast<const uint32_t*>(table[2 * lane])[reg], k % 2, type);
  };
  auto B = [&](int k, int col) -> float {
    if (type == MmaType::TF32) {
      const int lane = col * 4 + k % 4;
      return tf32_of(static_cast<const uint32_t*>(table[2 * lane + 1])[k >= 4]);
    }
    const int lane = col * 4 + (k % 8) / 2;
    return half_of(static_cast<const uint32_t*>(table[2 * lane + 1])[k >= 8], k % 2, type);
  };
  const int K = type == MmaType::TF32 ? 8 : 16;
  const int lane = (int)lane_id(), g = lane >> 2, t = lane & 3;
  float out[4];
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
    float s = d[i];
    for (int k = 0; k < K; ++k) s += A(row, k) * B(k, col);
    out[i] = s;
  }
  warp_sync({20 + (int)type});  // every lane has read every other lane's a and b
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}

// ---------------------------------------------------------------------------------------------
// Fast-math intrinsics
// ---------------------------------------------------------------------------------------------

namespace {
float flush(float x) { return std::fpclassify(x) == FP_SUBNORMAL ? std::copysign(0.f, x) : x; }
uint32_t mix(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}
// exact * (1 ± rel), the sign a hash of the input's bits.
float off_by(double exact, double rel, float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  return (float)(exact * (1.0 + ((mix(bits) & 1u) ? rel : -rel)));
}
// The documented bounds (PTX ISA), the first two rounded up: ex2.approx.f32 2 ulp (2^-22
// relative), rcp.approx.f32 1 ulp, tanh.approx.f32 2^-10.987 relative.
constexpr double kEx2RelErr = 0x1p-21, kRcpRelErr = 0x1p-22;
const double kTanhRelErr = std::exp2(-10.987);
}  // namespace

float ex2_approx_ftz(float x) {
  x = flush(x);
  if (std::isnan(x)) return x;
  const double e = std::exp2((double)x);
  if (e > (double)FLT_MAX) return INFINITY;
  return flush(off_by(e, kEx2RelErr, x));
}

float rcp_approx_ftz(float x) {
  x = flush(x);
  if (std::isnan(x)) return x;
  if (x == 0.f) return std::copysign(INFINITY, x);
  if (std::isinf(x)) return std::copysign(0.f, x);
  return flush(off_by(1.0 / (double)x, kRcpRelErr, x));
}

float tanh_approx(float x) {
  if (std::isnan(x)) return x;
  const float r = off_by(std::tanh((double)x), kTanhRelErr, x);
  return std::fmax(-1.f, std::fmin(1.f, r));
}

void set_schedule(Schedule s, uint64_t seed) {
  g_schedule = s;
  g_seed = seed;
}
Stats stats() { return g_stats; }
void reset_stats() { g_stats = Stats{}; }
const std::string& last_error() { return g_last_error; }
void set_last_error(const std::string& what) { g_last_error = what; }

void add_guard(const void* p, size_t bytes, const std::string& name) {
  g_guards.push_back({static_cast<const unsigned char*>(p), bytes, name});
}
void clear_guards() { g_guards.clear(); }

bool launch(void (*entry)(const void*), const void* params, int grid, int threads, size_t smem) {
  if (g_launch != nullptr) {
    g_last_error = "nested launch";
    return false;
  }
  if (grid <= 0 || threads <= 0 || threads % kWarpLanes != 0) {
    g_last_error = "invalid launch configuration";
    return false;
  }
  Launch L;
  L.entry = entry;
  L.params = params;
  L.grid = grid;
  L.threads = threads;
  L.smem = smem;
  // 128-byte aligned CTA buffers, like extern __shared__ __align__(128), each between guard zones at
  // least as large as itself (an access up to one buffer length out of bounds lands in a guard).
  const size_t rounded = (smem + 127) / 128 * 128;
  L.smem_guard = std::max<size_t>(256, rounded);
  L.smem_stride = 2 * L.smem_guard + rounded;
  L.smem_mem.assign(L.smem_stride * grid + 128, kGuardByte);
  L.smem_base = L.smem_mem.data() + (128 - reinterpret_cast<uintptr_t>(L.smem_mem.data()) % 128) % 128;
  for (int b = 0; b < grid; ++b)
    std::memset(L.smem_base + (size_t)b * L.smem_stride + L.smem_guard, kUnwrittenByte, smem);
  const size_t total = (size_t)grid * threads;
  L.th.resize(total);
  L.stacks.reset(new char[total * kStackBytes]);
  L.exchange.assign((size_t)grid * (threads / kWarpLanes) * kWarpLanes * kExchangeSlots, nullptr);
  L.epoch.assign(grid, 0);
  L.floor.assign(grid, 0);
  L.arrived.assign(grid, -1);
  for (size_t i = 0; i < total; ++i) {
    Thread& t = L.th[i];
    t.block = (int)(i / threads);
    t.tid = (int)(i % threads);
    start_stack(L, t, L.stacks.get() + i * kStackBytes, kStackBytes);
  }
  g_launch = &L;
  const bool ok = run(L);
  g_launch = nullptr;
  g_stats.launches++;
  if (!ok) {
    g_last_error = L.error;
    return false;
  }
  return check_guards(L);
}

}  // namespace fusedrnn_emu

// What rnn_ops.cpp calls in place of launch.cu: the emulated device's limits, its occupancy (one
// CTA per SM when the plan's shared memory fits) and the cooperative launch.
namespace fusedrnn {

namespace {
int g_num_sms = 132;
int g_smem_optin = 227 * 1024;
}  // namespace

cudaError_t device_limits(int* num_sms, int* smem_optin) {
  *num_sms = g_num_sms;
  *smem_optin = g_smem_optin;
  return cudaSuccess;
}

cudaError_t occupancy(const void*, size_t smem, Occupancy* occ) {
  occ->num_sms = g_num_sms;
  occ->max_smem_optin = g_smem_optin;
  occ->cooperative = true;
  occ->blocks_per_sm = smem <= (size_t)g_smem_optin ? 1 : 0;
  return cudaSuccess;
}

cudaError_t launch_cooperative(const void* kernel, const Plan& plan, void* params, cudaStream_t) {
  if (plan.grid > g_num_sms || plan.bytes > (size_t)g_smem_optin) {
    fusedrnn_emu::set_last_error("the grid of " + std::to_string(plan.grid) + " CTAs with " +
                                 std::to_string(plan.bytes) + " bytes of shared memory each does not fit the " +
                                 "emulated device (" + std::to_string(g_num_sms) + " SMs, " +
                                 std::to_string(g_smem_optin) + " bytes)");
    return cudaErrorCooperativeLaunchTooLarge;
  }
  auto entry = reinterpret_cast<void (*)(const void*)>(const_cast<void*>(kernel));
  return fusedrnn_emu::launch(entry, params, plan.grid, kThreads, plan.bytes) ? cudaSuccess : cudaErrorLaunchFailure;
}

}  // namespace fusedrnn

namespace fusedrnn_emu {
void set_device(int num_sms, int smem_optin) {
  fusedrnn::g_num_sms = num_sms;
  fusedrnn::g_smem_optin = smem_optin;
}
}  // namespace fusedrnn_emu
