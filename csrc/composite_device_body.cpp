// smalldepthmask::composite_device_body: the CUDA kernel's body (composite_pixel.h) run on the host, walking
// the GPU's launch exactly: for every block (z, y, x) of the grid, for every sample b = z, z + gridDim.z, ...:
// stage the block's taps (a host loop through stage_tap, as the block's threads share it on the GPU), then
// run out_pixel for every thread (ly, lx) whose out pixel is inside the image. A test and diagnostic entry
// point (the CPU CI runs every per-pixel arithmetic line of the GPU kernel through it), not a user backend.
#include <limits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include "composite.h"
#include "composite_pixel.h"

namespace smalldepthmask {

KernelArgs kernel_args(const at::Tensor& bg_flat, const at::Tensor& bg_table, const at::Tensor& fg_flat,
                       const at::Tensor& fg_table, const at::Tensor& iparams, const at::Tensor& fparams,
                       int64_t compose, int64_t out, int64_t mask_count, at::Tensor& image, at::Tensor& mask,
                       at::Tensor* comp) {
  const int64_t B = iparams.size(0);
  TORCH_CHECK(out <= (int64_t)kTileY * 65535, "composite: out = ", out, " is too large for the CUDA grid");
  TORCH_CHECK(B <= std::numeric_limits<int>::max(), "composite: B = ", B, " samples is too many for one call");
  KernelArgs a;
  a.bg_flat = bg_flat.data_ptr<uint8_t>();
  a.bg_table = bg_table.data_ptr<int64_t>();
  a.fg_flat = fg_flat.data_ptr<uint8_t>();
  a.fg_table = fg_table.data_ptr<int64_t>();
  a.iparams = iparams.data_ptr<int64_t>();
  a.fparams = fparams.data_ptr<double>();
  a.B = (int)B;
  a.S = (int)compose;
  a.O = (int)out;
  a.f = (int)(compose / out);
  a.mask_count = mask_count;
  const BlendConsts k = blend_consts(a.f);
  a.ka = k.ka;
  a.kc = k.kc;
  a.inv_ff = k.inv_ff;
  a.image = image.data_ptr<uint8_t>();
  a.mask = mask.data_ptr<uint8_t>();
  a.compose = comp != nullptr ? comp->data_ptr<float>() : nullptr;
  return a;
}

namespace {

// The grid walk of one kernel variant; blocks are independent (disjoint outputs), so they run in parallel.
struct HostWalk {
  const KernelArgs& a;
  GridShape g;

  template <int F, bool SmemTaps>
  void go() const {
    const int f = F > 0 ? F : a.f;
    const int64_t nblocks = g.z * g.y * g.x;
    at::parallel_for(0, nblocks, 1, [&](int64_t begin, int64_t end) {
      // the block's shared memory: the bytes the CUDA launch asks for, carved the same way
      std::vector<Int4> smem(SmemTaps ? tap_stage_bytes(f) / sizeof(Int4) + 1 : 1);
      const TapStage st = tap_stage(smem.data(), f, SmemTaps);
      for (int64_t blk = begin; blk < end; ++blk) {
        const int bz = (int)(blk / (g.y * g.x)), by = (int)(blk / g.x % g.y), bx = (int)(blk % g.x);
        const int px0 = bx * kTileX * f, py0 = by * kTileY * f;
        for (int b = bz; b < a.B; b += (int)g.z) {
          const SampleView s = sample_view(a, b);
          if (SmemTaps) {
            for (int i = 0; i < st.ncols + st.nrows; ++i) stage_tap(st, s, px0, py0, i);
          }
          for (int ly = 0; ly < kTileY; ++ly) {
            for (int lx = 0; lx < kTileX; ++lx) {
              const int ox = bx * kTileX + lx, oy = by * kTileY + ly;
              if (ox >= a.O || oy >= a.O) continue;
              sample_pixel<F, SmemTaps>(a, s, st, b, ox, oy, lx, ly);
            }
          }
        }
      }
    });
  }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> composite_device_body(
    const at::Tensor& bg_flat, const at::Tensor& bg_table, const at::Tensor& fg_flat, const at::Tensor& fg_table,
    const at::Tensor& iparams, const at::Tensor& fparams, int64_t compose, int64_t out, int64_t mask_count,
    bool want_compose) {
  check_composite_args(bg_flat, bg_table, fg_flat, fg_table, iparams, fparams, compose, out, mask_count);
  TORCH_CHECK(bg_flat.device().is_cpu(), "composite_device_body: tensors are on ", bg_flat.device());
  auto [image, mask, comp] = allocate_outputs(iparams, compose, out, want_compose);
  if (iparams.size(0) == 0) return {image, mask, comp};
  const KernelArgs a = kernel_args(bg_flat, bg_table, fg_flat, fg_table, iparams, fparams, compose, out,
                                   mask_count, image, mask, want_compose ? &comp : nullptr);
  HostWalk walk{a, grid_shape(a)};
  dispatch_variant(a.f, walk);
  return {image, mask, comp};
}

}  // namespace smalldepthmask
