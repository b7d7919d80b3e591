// Cooperative launch of the persistent kernels (occupancy check first, so a grid that cannot be
// co-resident fails with a clear error instead of hanging), and the barrier-only kernel that gives
// the benchmark its latency floor: T grid barriers and nothing else.
#include <cooperative_groups.h>

#include "rnn_launch.h"

namespace fusedrnn {

namespace cg = cooperative_groups;

#define FUSEDRNN_RETURN_IF_ERROR(expr)      \
  do {                                      \
    cudaError_t err_ = (expr);              \
    if (err_ != cudaSuccess) return err_;   \
  } while (0)

cudaError_t plan_launch(const void* kernel, size_t smem, int grid, LaunchPlan* plan) {
  int dev = 0, coop = 0;
  FUSEDRNN_RETURN_IF_ERROR(cudaGetDevice(&dev));
  FUSEDRNN_RETURN_IF_ERROR(cudaDeviceGetAttribute(&plan->num_sms, cudaDevAttrMultiProcessorCount, dev));
  FUSEDRNN_RETURN_IF_ERROR(cudaDeviceGetAttribute(&plan->max_smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  FUSEDRNN_RETURN_IF_ERROR(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev));
  plan->cooperative = coop != 0;
  plan->grid = grid;
  plan->smem = smem;
  plan->blocks_per_sm = 0;
  if (smem > (size_t)plan->max_smem_optin) return cudaSuccess;
  FUSEDRNN_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(&plan->blocks_per_sm, kernel, kThreads, smem);
}

cudaError_t launch_cooperative(const void* kernel, size_t smem, int grid, void* params, cudaStream_t stream) {
  LaunchPlan plan;
  FUSEDRNN_RETURN_IF_ERROR(plan_launch(kernel, smem, grid, &plan));
  if (!plan.fits()) return cudaErrorCooperativeLaunchTooLarge;
  void* args[] = {params};
  return cudaLaunchCooperativeKernel(kernel, dim3(grid), dim3(kThreads), args, smem, stream);
}

__global__ void __launch_bounds__(kThreads, 1) barrier_floor_persistent_kernel(int steps) {
  cg::grid_group g = cg::this_grid();
  for (int s = 0; s < steps; ++s) g.sync();
}

cudaError_t barrier_floor(int steps, int grid, cudaStream_t stream, float* ms) {
  const void* kernel = reinterpret_cast<const void*>(&barrier_floor_persistent_kernel);
  cudaEvent_t start, stop;
  FUSEDRNN_RETURN_IF_ERROR(cudaEventCreate(&start));
  FUSEDRNN_RETURN_IF_ERROR(cudaEventCreate(&stop));
  void* args[] = {&steps};
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
