// Control and results of the CPU emulator (runtime.cpp) for the emulator's bindings and the glue.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace fusedrnn_emu {

// Order in which threads run between barriers. The first three are breadth-first (threads released
// together are queued behind everybody else), the eager ones depth-first (released threads run first,
// as far ahead as the barriers let them).
enum class Schedule : int { InOrder = 0, Reversed = 1, Shuffled = 2, Eager = 3, EagerShuffled = 4 };

struct Stats {
  int64_t launches = 0, grid_barriers = 0, block_barriers = 0, warp_barriers = 0, switches = 0;
};

// Runs entry(params) as `grid` CTAs of `threads` threads with `smem` bytes of dynamic shared memory
// each. False on a failure (trap, deadlock, a broken cp.async or mma rule, a guard zone overwritten):
// last_error() says which.
bool launch(void (*entry)(const void*), const void* params, int grid, int threads, size_t smem);
const std::string& last_error();
void set_last_error(const std::string& what);

// The emulated device the glue plans for: SM count and opt-in shared memory per CTA (default an
// H100 SXM: 132 SMs, 227 KiB). Tests shrink it to force batch groups into several passes.
void set_device(int num_sms, int smem_optin);

void set_schedule(Schedule s, uint64_t seed);
Stats stats();
void reset_stats();

// Global buffers: guard zones registered by the glue (filled with kGuardByte), checked after each launch.
constexpr unsigned char kGuardByte = 0xFD;      // guard zones
constexpr unsigned char kUnwrittenByte = 0xFF;  // memory nobody has written yet: NaN in fp16, bf16, fp32
void add_guard(const void* p, size_t bytes, const std::string& name);
void clear_guards();

}  // namespace fusedrnn_emu
