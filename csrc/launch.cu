// Cooperative launch of the persistent kernels (occupancy check first, so a grid that cannot be
// co-resident fails with a clear error instead of hanging), and the synchronisation-only kernel that
// gives the benchmark its latency floor: T grid barriers (or T rounds of ready flags) and nothing else.
#include <cooperative_groups.h>

#include <map>
#include <mutex>
#include <tuple>

#include "ptx.cuh"
#include "rnn_launch.h"

namespace fusedrnn {

namespace cg = cooperative_groups;

#define FUSEDRNN_RETURN_IF_ERROR(expr)    \
  do {                                    \
    cudaError_t err_ = (expr);            \
    if (err_ != cudaSuccess) return err_; \
  } while (0)

cudaError_t device_limits(int* num_sms, int* smem_optin) {
  int dev = 0;
  FUSEDRNN_RETURN_IF_ERROR(cudaGetDevice(&dev));
  FUSEDRNN_RETURN_IF_ERROR(cudaDeviceGetAttribute(num_sms, cudaDevAttrMultiProcessorCount, dev));
  return cudaDeviceGetAttribute(smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
}

namespace {
std::mutex g_mutex;
// Kernels whose dynamic shared-memory limit is raised on a device, and occupancy answers, per
// (kernel, device[, bytes]). The limit is set once per kernel and device to the device's opt-in
// maximum, the most any plan asks for: setting it per launch to the launch's size would let two host
// threads launching different sizes race (one lowers the limit under the other's launch).
std::map<std::tuple<const void*, int>, bool> g_raised;
std::map<std::tuple<const void*, int, size_t>, Occupancy> g_occupancy;

cudaError_t raise_smem_limit(const void* kernel, int dev, int smem_optin) {
  if (g_raised.count({kernel, dev})) return cudaSuccess;
  FUSEDRNN_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_optin));
  g_raised[{kernel, dev}] = true;
  return cudaSuccess;
}
}  // namespace

cudaError_t occupancy(const void* kernel, size_t smem, Occupancy* occ) {
  int dev = 0, coop = 0;
  FUSEDRNN_RETURN_IF_ERROR(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(g_mutex);
  const auto key = std::make_tuple(kernel, dev, smem);
  const auto hit = g_occupancy.find(key);
  if (hit != g_occupancy.end()) {
    *occ = hit->second;
    return cudaSuccess;
  }
  Occupancy o;
  FUSEDRNN_RETURN_IF_ERROR(device_limits(&o.num_sms, &o.max_smem_optin));
  FUSEDRNN_RETURN_IF_ERROR(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev));
  o.cooperative = coop != 0;
  if (smem <= (size_t)o.max_smem_optin) {
    FUSEDRNN_RETURN_IF_ERROR(raise_smem_limit(kernel, dev, o.max_smem_optin));
    FUSEDRNN_RETURN_IF_ERROR(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&o.blocks_per_sm, kernel, kThreads, smem));
  }
  g_occupancy[key] = o;
  *occ = o;
  return cudaSuccess;
}

cudaError_t launch_cooperative(const void* kernel, const Plan& plan, void* params, cudaStream_t stream) {
  Occupancy occ;
  FUSEDRNN_RETURN_IF_ERROR(occupancy(kernel, plan.bytes, &occ));
  if (!occ.cooperative || occ.blocks_per_sm == 0 || plan.grid > occ.blocks_per_sm * occ.num_sms)
    return cudaErrorCooperativeLaunchTooLarge;
  void* args[] = {params};
  return cudaLaunchCooperativeKernel(kernel, dim3(plan.grid), dim3(kThreads), args, plan.bytes, stream);
}

// flags null: a grid barrier per step. Otherwise (gridDim.x zeroed flags) the kernels' ready-flag
// step boundary: the pass's last __syncthreads(), publish, wait for every CTA's flag.
__global__ void __launch_bounds__(kThreads, 1) barrier_floor_persistent_kernel(int steps, int* flags) {
  cg::grid_group g = cg::this_grid();
  for (int s = 0; s < steps; ++s) {
    if (flags == nullptr) {
      g.sync();
    } else {
      __syncthreads();
      publish_ready(flags + blockIdx.x, s + 1);
      wait_ready(flags, (int)gridDim.x, s + 1);
    }
  }
}

cudaError_t barrier_floor(int steps, int grid, int* flags, cudaStream_t stream, float* ms) {
  const void* kernel = reinterpret_cast<const void*>(&barrier_floor_persistent_kernel);
  cudaEvent_t start, stop;
  FUSEDRNN_RETURN_IF_ERROR(cudaEventCreate(&start));
  FUSEDRNN_RETURN_IF_ERROR(cudaEventCreate(&stop));
  void* args[] = {&steps, &flags};
  cudaError_t err = cudaEventRecord(start, stream);
  if (err == cudaSuccess) err = cudaLaunchCooperativeKernel(kernel, dim3(grid), dim3(kThreads), args, 0, stream);
  if (err == cudaSuccess) err = cudaEventRecord(stop, stream);
  if (err == cudaSuccess) err = cudaEventSynchronize(stop);
  if (err == cudaSuccess) err = cudaEventElapsedTime(ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return err;
}

}  // namespace fusedrnn
