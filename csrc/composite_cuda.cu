// smalldepthmask::composite: the CUDA kernel. One thread per out pixel (it makes its f x f compose pixels and
// writes compose, image and mask), blocks of 32 x 8 out pixels, grid (out tiles, out tiles, samples). A block
// first computes the taps of its compose columns and rows into shared memory (float64, composite.h), so each
// tap set is computed once per block instead of once per pixel. Everything runs on the current stream.
// Built with --fmad=false; the float64 tap math uses explicit __d*_rn and the float32 blend __f*_rn.
#include "composite.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace smalldepthmask {

namespace {

constexpr int kTileX = 32;        // out pixels per block, x
constexpr int kTileY = 8;         // out pixels per block, y
constexpr int kMaxSmemF = 32;     // shared-memory taps up to this factor; above, taps are computed per pixel
constexpr int kMaxGridZ = 65535;

struct KernelArgs {
  const uint8_t* bg_flat;
  const int64_t* bg_table;
  const uint8_t* fg_flat;
  const int64_t* fg_table;
  const int64_t* iparams;
  const double* fparams;
  int B, S, O, f;
  long long mask_count;
  float ka, kc, inv_ff;
  uint8_t* image;
  uint8_t* mask;
  float* compose;      // nullptr when not wanted
};

struct Tap {
  int first;
  int4 q;
};

__device__ __forceinline__ Tap make_tap(int64_t p, double pos0, double ratio, int64_t size, bool flip) {
  int32_t q[kTaps];
  Tap t;
  safe_taps(p, pos0, ratio, size, flip, &t.first, q);
  t.q = make_int4(q[0], q[1], q[2], q[3]);
  return t;
}

__device__ __forceinline__ bool any_weight(const int4& q) { return (q.x | q.y | q.z | q.w) != 0; }

template <bool Aligned>
__device__ __forceinline__ void load_rgba(const uint8_t* p, int& r, int& g, int& b, int& a) {
  if (Aligned) {
    const uint32_t v = __ldg(reinterpret_cast<const unsigned int*>(p));
    r = v & 0xff; g = (v >> 8) & 0xff; b = (v >> 16) & 0xff; a = v >> 24;
  } else {
    r = __ldg(p); g = __ldg(p + 1); b = __ldg(p + 2); a = __ldg(p + 3);
  }
}

// Exact integer (C_r, C_g, C_b, A) of one compose pixel. Taps with weight 0 read a clamped (valid) pixel.
template <bool Aligned>
__device__ __forceinline__ void accumulate(const uint8_t* fg, int h, int w, const Tap& ty, const Tap& tx,
                                           int acc[4]) {
  const int qy[4] = {ty.q.x, ty.q.y, ty.q.z, ty.q.w};
  const int qx[4] = {tx.q.x, tx.q.y, tx.q.z, tx.q.w};
  int cols[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) cols[k] = min(max(tx.first + k, 0), w - 1) * 4;
  acc[0] = acc[1] = acc[2] = acc[3] = 0;
#pragma unroll
  for (int l = 0; l < 4; ++l) {
    if (qy[l] == 0) continue;
    const uint8_t* row = fg + (int64_t)min(max(ty.first + l, 0), h - 1) * w * 4;
    int s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      int r, g, b, a;
      load_rgba<Aligned>(row + cols[k], r, g, b, a);
      s0 += qx[k] * r; s1 += qx[k] * g; s2 += qx[k] * b; s3 += qx[k] * a;
    }
    acc[0] += qy[l] * s0; acc[1] += qy[l] * s1; acc[2] += qy[l] * s2; acc[3] += qy[l] * s3;
  }
}

// F > 0: the factor f at compile time (1, 2, 4); F == 0: any f. SmemTaps: taps precomputed per block.
template <int F, bool SmemTaps, bool Aligned>
__global__ void __launch_bounds__(kTileX * kTileY) composite_kernel(const KernelArgs a) {
  extern __shared__ int4 smem[];
  const int f = F > 0 ? F : a.f;
  const int S = a.S, O = a.O;
  const int ncols = SmemTaps ? kTileX * f : 0, nrows = SmemTaps ? kTileY * f : 0;
  int4* colq = smem;
  int4* rowq = colq + ncols;
  int* colfirst = reinterpret_cast<int*>(rowq + nrows);
  int* rowfirst = colfirst + ncols;
  const int tid = threadIdx.y * kTileX + threadIdx.x;
  const int ox = blockIdx.x * kTileX + threadIdx.x;
  const int oy = blockIdx.y * kTileY + threadIdx.y;
  const int px0 = blockIdx.x * kTileX * f, py0 = blockIdx.y * kTileY * f;

  for (int b = blockIdx.z; b < a.B; b += gridDim.z) {
    const int64_t* ip = a.iparams + (int64_t)b * 5;
    const double* fp = a.fparams + (int64_t)b * 4;
    const int64_t bgid = ip[0], cy = ip[1], cx = ip[2], entry = ip[3];
    const bool flip = ip[4] != 0;
    const double x0 = fp[0], y0 = fp[1], rx = fp[2], ry = fp[3];
    const int64_t bg_stride = a.bg_table[bgid * 3 + 2] * 3;
    const uint8_t* bg = a.bg_flat + a.bg_table[bgid * 3] + cy * bg_stride + cx * 3;
    const uint8_t* fg = a.fg_flat + a.fg_table[entry * 3];
    const int h = (int)a.fg_table[entry * 3 + 1], w = (int)a.fg_table[entry * 3 + 2];

    if (SmemTaps) {
      __syncthreads();  // the previous sample's taps are no longer read
      for (int i = tid; i < ncols + nrows; i += kTileX * kTileY) {
        Tap t;
        if (i < ncols) {
          t = make_tap(px0 + i, x0, rx, w, flip);  // columns past S are computed but never read
          colq[i] = t.q;
          colfirst[i] = t.first;
        } else {
          t = make_tap(py0 + (i - ncols), y0, ry, h, false);
          rowq[i - ncols] = t.q;
          rowfirst[i - ncols] = t.first;
        }
      }
      __syncthreads();
    }
    if (ox >= O || oy >= O) continue;

    float tot[3] = {0.f, 0.f, 0.f};
    long long asum = 0;
    for (int dy = 0; dy < f; ++dy) {
      const int py = oy * f + dy;
      Tap ty;
      if (SmemTaps) {
        ty.q = rowq[threadIdx.y * f + dy];
        ty.first = rowfirst[threadIdx.y * f + dy];
      } else {
        ty = make_tap(py, y0, ry, h, false);
      }
      const bool rowhit = any_weight(ty.q);
      const uint8_t* bgrow = bg + (int64_t)py * bg_stride;
      float* comp_row = a.compose ? a.compose + ((int64_t)b * 3 * S + py) * S : nullptr;
      float vals[3][F > 0 ? F : 1];
#pragma unroll
      for (int dx = 0; dx < f; ++dx) {
        const int px = ox * f + dx;
        int acc[4] = {0, 0, 0, 0};
        if (rowhit) {
          Tap tx;
          if (SmemTaps) {
            tx.q = colq[threadIdx.x * f + dx];
            tx.first = colfirst[threadIdx.x * f + dx];
          } else {
            tx = make_tap(px, x0, rx, w, flip);
          }
          if (any_weight(tx.q)) accumulate<Aligned>(fg, h, w, ty, tx, acc);
        }
        // Blend, the reference's float32 operation order.
        const float fa = __fmul_rn(__int2float_rn(acc[3]), a.ka);
        const float om = __fsub_rn(1.0f, fa);
        asum += (acc[3] + (1 << (kAlphaShift - 1))) >> kAlphaShift;
#pragma unroll
        for (int ch = 0; ch < 3; ++ch) {
          const float v = __fadd_rn(__fmul_rn(__int2float_rn(acc[ch]), a.kc),
                                    __fmul_rn(om, (float)bgrow[px * 3 + ch]));
          tot[ch] = (dy == 0 && dx == 0) ? v : __fadd_rn(tot[ch], v);
          if (F > 0) {
            vals[ch][F > 0 ? dx : 0] = v;
          } else if (comp_row) {
            comp_row[(int64_t)ch * S * S + px] = __fdiv_rn(v, 255.0f);
          }
        }
      }
      if (F > 0 && comp_row) {
#pragma unroll
        for (int ch = 0; ch < 3; ++ch) {
          float* dst = comp_row + (int64_t)ch * S * S + ox * f;
          if (F == 2) {
            *reinterpret_cast<float2*>(dst) =
                make_float2(__fdiv_rn(vals[ch][0], 255.0f), __fdiv_rn(vals[ch][F > 1 ? 1 : 0], 255.0f));
          } else {
#pragma unroll
            for (int dx = 0; dx < (F > 0 ? F : 1); ++dx) dst[dx] = __fdiv_rn(vals[ch][dx], 255.0f);
          }
        }
      }
    }
    uint8_t* img = a.image + (((int64_t)b * O + oy) * O + ox) * 3;
#pragma unroll
    for (int ch = 0; ch < 3; ++ch) {
      const float t = floorf(__fadd_rn(__fmul_rn(tot[ch], a.inv_ff), 0.5f));
      img[ch] = (uint8_t)fminf(fmaxf(t, 0.0f), 255.0f);
    }
    a.mask[((int64_t)b * O + oy) * O + ox] = asum >= a.mask_count ? 1 : 0;
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

template <int F, bool SmemTaps>
void launch_aligned(const KernelArgs& a, bool aligned, dim3 grid, dim3 block, size_t smem, cudaStream_t stream) {
  if (aligned) {
    composite_kernel<F, SmemTaps, true><<<grid, block, smem, stream>>>(a);
  } else {
    composite_kernel<F, SmemTaps, false><<<grid, block, smem, stream>>>(a);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> composite_cuda(
    const at::Tensor& bg_flat, const at::Tensor& bg_table, const at::Tensor& fg_flat, const at::Tensor& fg_table,
    const at::Tensor& iparams, const at::Tensor& fparams, int64_t compose, int64_t out, int64_t mask_count,
    bool want_compose) {
  const ArgInfo info =
      check_composite_args(bg_flat, bg_table, fg_flat, fg_table, iparams, fparams, compose, out, mask_count);
  TORCH_CHECK(bg_flat.is_cuda(), "composite_cuda: tensors are on ", bg_flat.device());
  const c10::cuda::CUDAGuard guard(bg_flat.device());
  auto [image, mask, comp] = allocate_outputs(iparams, compose, out, want_compose);
  const int64_t B = iparams.size(0);
  if (B == 0) return {image, mask, comp};
  TORCH_CHECK(out <= (int64_t)kTileY * 65535, "composite: out = ", out, " is too large for the CUDA grid");

  KernelArgs a;
  a.bg_flat = bg_flat.data_ptr<uint8_t>();
  a.bg_table = bg_table.data_ptr<int64_t>();
  a.fg_flat = fg_flat.data_ptr<uint8_t>();
  a.fg_table = fg_table.data_ptr<int64_t>();
  a.iparams = iparams.data_ptr<int64_t>();
  a.fparams = fparams.data_ptr<double>();
  TORCH_CHECK(B <= std::numeric_limits<int>::max(), "composite: B = ", B, " samples is too many for one call");
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
  a.compose = want_compose ? comp.data_ptr<float>() : nullptr;

  const dim3 block(kTileX, kTileY);
  const dim3 grid((unsigned)((out + kTileX - 1) / kTileX), (unsigned)((out + kTileY - 1) / kTileY),
                  (unsigned)std::min<int64_t>(B, kMaxGridZ));
  const size_t smem = (size_t)(kTileX + kTileY) * a.f * (sizeof(int4) + sizeof(int));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const bool aligned = info.fg_aligned4;
  switch (a.f) {
    case 1: launch_aligned<1, true>(a, aligned, grid, block, smem, stream); break;
    case 2: launch_aligned<2, true>(a, aligned, grid, block, smem, stream); break;
    case 4: launch_aligned<4, true>(a, aligned, grid, block, smem, stream); break;
    default:
      if (a.f <= kMaxSmemF) {
        launch_aligned<0, true>(a, aligned, grid, block, smem, stream);
      } else {
        launch_aligned<0, false>(a, aligned, grid, block, 0, stream);
      }
  }
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
