// smalldepthmask::composite: the CUDA kernel, a thin launch loop around composite_pixel.h. One thread per out
// pixel (it makes its f x f compose pixels and writes compose, image and mask), blocks of 32 x 8 out pixels,
// grid (out tiles, out tiles, samples). A block first computes the taps of its compose columns and rows into
// shared memory (float64, composite.h), so each tap set is computed once per block instead of once per pixel.
// Everything runs on the current stream. The same functions run on the host in composite_device_body.cpp.
// Built with --fmad=false; the float64 tap math uses explicit __d*_rn and the float32 blend __f*_rn.
#include "composite.h"
#include "composite_pixel.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace smalldepthmask {

namespace {

// One thread per out pixel; the block stages its taps in shared memory first (SmemTaps), then each thread runs
// sample_pixel (composite_pixel.h) for every sample b = blockIdx.z, blockIdx.z + gridDim.z, ...
template <int F, bool SmemTaps>
__global__ void __launch_bounds__(kTileX * kTileY) composite_kernel(const KernelArgs a) {
  extern __shared__ Int4 smem[];
  const int f = F > 0 ? F : a.f;
  const TapStage st = tap_stage(smem, f, SmemTaps);
  const int tid = threadIdx.y * kTileX + threadIdx.x;
  const int ox = blockIdx.x * kTileX + threadIdx.x;
  const int oy = blockIdx.y * kTileY + threadIdx.y;
  const int px0 = blockIdx.x * kTileX * f, py0 = blockIdx.y * kTileY * f;
  for (int b = blockIdx.z; b < a.B; b += gridDim.z) {
    const SampleView s = sample_view(a, b);
    if (SmemTaps) {
      __syncthreads();  // the previous sample's taps are no longer read
      for (int i = tid; i < st.ncols + st.nrows; i += kTileX * kTileY) stage_tap(st, s, px0, py0, i);
      __syncthreads();
    }
    if (ox >= a.O || oy >= a.O) continue;
    sample_pixel<F, SmemTaps>(a, s, st, b, ox, oy, threadIdx.x, threadIdx.y);
  }
}

__global__ void axis_taps_kernel(const double* pos0, const double* ratio, const int64_t* size, const bool* flip,
                                 int64_t B, int64_t n, int64_t* index, int64_t* weight) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= B * n) return;
  const int64_t b = i / n, p = i % n;
  int64_t first;
  int32_t q[kTaps];
  axis_taps(p, pos0[b], ratio[b], (double)size[b], flip[b], &first, q);
  for (int k = 0; k < kTaps; ++k) {
    index[i * kTaps + k] = first + k;
    weight[i * kTaps + k] = q[k];
  }
}

dim3 grid_of(const KernelArgs& a) {
  const GridShape g = grid_shape(a);
  return dim3((unsigned)g.x, (unsigned)g.y, (unsigned)g.z);
}

struct Launch {
  const KernelArgs& a;
  dim3 grid, block;
  cudaStream_t stream;
  template <int F, bool SmemTaps>
  void go() {
    const size_t smem = SmemTaps ? tap_stage_bytes(a.f) : 0;
    composite_kernel<F, SmemTaps><<<grid, block, smem, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> composite_cuda(
    const at::Tensor& bg_flat, const at::Tensor& bg_table, const at::Tensor& fg_flat, const at::Tensor& fg_table,
    const at::Tensor& iparams, const at::Tensor& fparams, int64_t compose, int64_t out, int64_t mask_count,
    bool want_compose) {
  // Shapes only: the values were checked on the host before the upload (check_composite_values; composite.py
  // and Bank.to do it), so this op never waits for the device.
  check_composite_shapes(bg_flat, bg_table, fg_flat, fg_table, iparams, fparams, compose, out, mask_count);
  TORCH_CHECK(bg_flat.is_cuda(), "composite_cuda: tensors are on ", bg_flat.device());
  const c10::cuda::CUDAGuard guard(bg_flat.device());
  auto [image, mask, comp] = allocate_outputs(iparams, compose, out, want_compose);
  const int64_t B = iparams.size(0);
  if (B == 0) return {image, mask, comp};
  const KernelArgs a = kernel_args(bg_flat, bg_table, fg_flat, fg_table, iparams, fparams, compose, out,
                                   mask_count, image, mask, want_compose ? &comp : nullptr);
  Launch launch{a, grid_of(a), dim3(kTileX, kTileY), at::cuda::getCurrentCUDAStream()};
  dispatch_variant(a.f, launch);
  return {image, mask, comp};
}

std::tuple<at::Tensor, at::Tensor> axis_taps_cuda(const at::Tensor& pos0, const at::Tensor& ratio,
                                                  const at::Tensor& size, const at::Tensor& flip, int64_t n) {
  check_axis_taps_args(pos0, ratio, size, flip, n);
  const c10::cuda::CUDAGuard guard(pos0.device());
  const int64_t B = pos0.size(0);
  at::Tensor index = at::empty({B, n, kTaps}, pos0.options().dtype(at::kLong));
  at::Tensor weight = at::empty({B, n, kTaps}, pos0.options().dtype(at::kLong));
  const int64_t total = B * n;
  if (total > 0) {
    const int threads = 256;
    axis_taps_kernel<<<(unsigned)((total + threads - 1) / threads), threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        pos0.data_ptr<double>(), ratio.data_ptr<double>(), size.data_ptr<int64_t>(), flip.data_ptr<bool>(), B, n,
        index.data_ptr<int64_t>(), weight.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {index, weight};
}

}  // namespace smalldepthmask
