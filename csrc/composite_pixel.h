// smalldepthmask::composite: the CUDA kernel's per-block and per-out-pixel work, as __host__ __device__
// functions. composite_cuda.cu launches them as the GPU grid (one thread per out pixel, blocks of
// kTileX x kTileY, grid (out tiles, out tiles, samples)); composite_device_body.cpp walks the same grid on the
// host (sample, block, thread), so every arithmetic line the GPU runs per pixel also runs in CPU CI.
//
// Rounding: float64 tap math through SDM_D* (composite.h), float32 blend through SDM_F* below: __f*_rn on the
// device, plain IEEE operators on the host (built with -ffp-contract=off, so nothing fuses either way).
#pragma once

#include <math.h>

#include <cstdint>
#include <cstring>

#include "composite.h"

#if defined(__CUDA_ARCH__)
#define SDM_FADD(a, b) __fadd_rn((a), (b))
#define SDM_FSUB(a, b) __fsub_rn((a), (b))
#define SDM_FMUL(a, b) __fmul_rn((a), (b))
#define SDM_FDIV(a, b) __fdiv_rn((a), (b))
#define SDM_I2F(i) __int2float_rn(i)
#define SDM_LDG(p) __ldg(p)
#else
#define SDM_FADD(a, b) ((a) + (b))
#define SDM_FSUB(a, b) ((a) - (b))
#define SDM_FMUL(a, b) ((a) * (b))
#define SDM_FDIV(a, b) ((a) / (b))
#define SDM_I2F(i) ((float)(i))
#define SDM_LDG(p) (*(p))
#endif

namespace smalldepthmask {

constexpr int kTileX = 32;     // out pixels per block, x
constexpr int kTileY = 8;      // out pixels per block, y
constexpr int kMaxSmemF = 32;  // shared-memory taps up to this factor; above, taps are computed per pixel
constexpr int kMaxGridZ = 65535;

#if defined(__CUDACC__)
using Int4 = int4;
#else
struct alignas(16) Int4 {
  int32_t x, y, z, w;
};
#endif

struct KernelArgs {
  const uint8_t* bg_flat;    // [sum H*W*3] uint8
  const int64_t* bg_table;   // [m, 3] int64 (offset, H, W)
  const uint8_t* fg_flat;    // [sum h*w*4] uint8, premultiplied RGBA
  const int64_t* fg_table;   // [E, 3] int64 (offset, h, w)
  const int64_t* iparams;    // [B, 5] int64 (bg, crop_y, crop_x, entry, flip)
  const double* fparams;     // [B, 4] float64 (x0, y0, rx, ry)
  int B, S, O, f;
  long long mask_count;
  float ka, kc, inv_ff;
  uint8_t* image;            // [B, O, O, 3] uint8
  uint8_t* mask;             // [B, O, O] uint8
  float* compose;            // [B, 3, S, S] float32, nullptr when not wanted
};

// Quantized taps of one compose pixel along one axis (safe_taps: weight 0 outside the source).
struct Tap {
  int32_t first;
  Int4 q;
};

SDM_HD Tap make_tap(int64_t p, double pos0, double ratio, int64_t size, bool flip) {
  int32_t q[kTaps];
  Tap t;
  safe_taps(p, pos0, ratio, size, flip, &t.first, q);
  t.q.x = q[0]; t.q.y = q[1]; t.q.z = q[2]; t.q.w = q[3];
  return t;
}

SDM_HD bool any_weight(const Int4& q) { return (q.x | q.y | q.z | q.w) != 0; }

SDM_HD int clamp_int(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// One sample's inputs, read from the tables.
struct SampleView {
  const uint8_t* bg;   // top-left of the crop window, rows bg_stride bytes apart
  int64_t bg_stride;
  const uint8_t* fg;   // [h, w, 4] uint8
  int h, w;
  double x0, y0, rx, ry;
  bool flip;
};

SDM_HD SampleView sample_view(const KernelArgs& a, int b) {
  const int64_t* ip = a.iparams + (int64_t)b * 5;
  const double* fp = a.fparams + (int64_t)b * 4;
  const int64_t bgid = ip[0], cy = ip[1], cx = ip[2], entry = ip[3];
  SampleView s;
  s.flip = ip[4] != 0;
  s.x0 = fp[0]; s.y0 = fp[1]; s.rx = fp[2]; s.ry = fp[3];
  s.bg_stride = a.bg_table[bgid * 3 + 2] * 3;
  s.bg = a.bg_flat + a.bg_table[bgid * 3] + cy * s.bg_stride + cx * 3;
  s.fg = a.fg_flat + a.fg_table[entry * 3];
  s.h = (int)a.fg_table[entry * 3 + 1];
  s.w = (int)a.fg_table[entry * 3 + 2];
  return s;
}

// A block's staged taps: kTileX * f compose columns and kTileY * f compose rows (shared memory on the GPU).
struct TapStage {
  Int4* colq;
  Int4* rowq;
  int32_t* colfirst;
  int32_t* rowfirst;
  int ncols, nrows;
};

SDM_HD size_t tap_stage_bytes(int f) { return (size_t)(kTileX + kTileY) * f * (sizeof(Int4) + sizeof(int32_t)); }

// Carves a TapStage out of `base` (16-byte aligned, tap_stage_bytes(f) long); SmemTaps false: an empty stage.
SDM_HD TapStage tap_stage(void* base, int f, bool smem_taps) {
  TapStage st;
  st.ncols = smem_taps ? kTileX * f : 0;
  st.nrows = smem_taps ? kTileY * f : 0;
  st.colq = reinterpret_cast<Int4*>(base);
  st.rowq = st.colq + st.ncols;
  st.colfirst = reinterpret_cast<int32_t*>(st.rowq + st.nrows);
  st.rowfirst = st.colfirst + st.ncols;
  return st;
}

// Stages entry i in [0, ncols + nrows) of the block whose first compose pixel is (px0, py0). The GPU's
// threads share the entries (i = tid, tid + 256, ...); the host walks them all.
SDM_HD void stage_tap(const TapStage& st, const SampleView& s, int px0, int py0, int i) {
  if (i < st.ncols) {
    const Tap t = make_tap(px0 + i, s.x0, s.rx, s.w, s.flip);  // columns past S are computed but never read
    st.colq[i] = t.q;
    st.colfirst[i] = t.first;
  } else {
    const Tap t = make_tap(py0 + (i - st.ncols), s.y0, s.ry, s.h, false);
    st.rowq[i - st.ncols] = t.q;
    st.rowfirst[i - st.ncols] = t.first;
  }
}

template <bool Aligned>
SDM_HD void load_rgba(const uint8_t* p, int& r, int& g, int& b, int& a) {
  if (Aligned) {
#if defined(__CUDA_ARCH__)
    const uint32_t v = __ldg(reinterpret_cast<const unsigned int*>(p));
#else
    uint32_t v;
    std::memcpy(&v, p, 4);  // little-endian, as on the GPU
#endif
    r = v & 0xff; g = (v >> 8) & 0xff; b = (v >> 16) & 0xff; a = v >> 24;
  } else {
    r = SDM_LDG(p); g = SDM_LDG(p + 1); b = SDM_LDG(p + 2); a = SDM_LDG(p + 3);
  }
}

// Exact integer (C_r, C_g, C_b, A) of one compose pixel. Taps with weight 0 read a clamped (valid) pixel.
template <bool Aligned>
SDM_HD void accumulate(const uint8_t* fg, int h, int w, const Tap& ty, const Tap& tx, int acc[4]) {
  const int qy[4] = {ty.q.x, ty.q.y, ty.q.z, ty.q.w};
  const int qx[4] = {tx.q.x, tx.q.y, tx.q.z, tx.q.w};
  int cols[4];
SDM_UNROLL
  for (int k = 0; k < 4; ++k) cols[k] = clamp_int(tx.first + k, 0, w - 1) * 4;
  acc[0] = acc[1] = acc[2] = acc[3] = 0;
SDM_UNROLL
  for (int l = 0; l < 4; ++l) {
    if (qy[l] == 0) continue;
    const uint8_t* row = fg + (int64_t)clamp_int(ty.first + l, 0, h - 1) * w * 4;
    int s0 = 0, s1 = 0, s2 = 0, s3 = 0;
SDM_UNROLL
    for (int k = 0; k < 4; ++k) {
      int r, g, b, al;
      load_rgba<Aligned>(row + cols[k], r, g, b, al);
      s0 += qx[k] * r; s1 += qx[k] * g; s2 += qx[k] * b; s3 += qx[k] * al;
    }
    acc[0] += qy[l] * s0; acc[1] += qy[l] * s1; acc[2] += qy[l] * s2; acc[3] += qy[l] * s3;
  }
}

SDM_HD void store2(float* dst, float v0, float v1) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<float2*>(dst) = make_float2(v0, v1);
#else
  dst[0] = v0;
  dst[1] = v1;
#endif
}

// Everything one out pixel (ox, oy) of sample b does: its f x f compose pixels (taps from the stage or computed
// here, accumulation, blend, compose stores), the block sums, the image pixel and the mask bit. (lx, ly): the
// thread's position in its block. F > 0: f at compile time (1, 2, 4); F == 0: any f.
template <int F, bool SmemTaps, bool Aligned>
SDM_HD void out_pixel(const KernelArgs& a, const SampleView& s, const TapStage& st, int b, int ox, int oy, int lx,
                      int ly) {
  const int f = F > 0 ? F : a.f;
  const int S = a.S, O = a.O;
  float tot[3] = {0.f, 0.f, 0.f};
  long long asum = 0;
  for (int dy = 0; dy < f; ++dy) {
    const int py = oy * f + dy;
    Tap ty;
    if (SmemTaps) {
      ty.q = st.rowq[ly * f + dy];
      ty.first = st.rowfirst[ly * f + dy];
    } else {
      ty = make_tap(py, s.y0, s.ry, s.h, false);
    }
    const bool rowhit = any_weight(ty.q);
    const uint8_t* bgrow = s.bg + (int64_t)py * s.bg_stride;
    float* comp_row = a.compose ? a.compose + ((int64_t)b * 3 * S + py) * S : nullptr;
    float vals[3][F > 0 ? F : 1];
SDM_UNROLL
    for (int dx = 0; dx < f; ++dx) {
      const int px = ox * f + dx;
      int acc[4] = {0, 0, 0, 0};
      if (rowhit) {
        Tap tx;
        if (SmemTaps) {
          tx.q = st.colq[lx * f + dx];
          tx.first = st.colfirst[lx * f + dx];
        } else {
          tx = make_tap(px, s.x0, s.rx, s.w, s.flip);
        }
        if (any_weight(tx.q)) accumulate<Aligned>(s.fg, s.h, s.w, ty, tx, acc);
      }
      // Blend, the reference's float32 operation order.
      const float fa = SDM_FMUL(SDM_I2F(acc[3]), a.ka);
      const float om = SDM_FSUB(1.0f, fa);
      asum += (acc[3] + (1 << (kAlphaShift - 1))) >> kAlphaShift;
SDM_UNROLL
      for (int ch = 0; ch < 3; ++ch) {
        const float v = SDM_FADD(SDM_FMUL(SDM_I2F(acc[ch]), a.kc), SDM_FMUL(om, (float)bgrow[px * 3 + ch]));
        tot[ch] = (dy == 0 && dx == 0) ? v : SDM_FADD(tot[ch], v);
        if (F > 0) {
          vals[ch][F > 0 ? dx : 0] = v;
        } else if (comp_row) {
          comp_row[(int64_t)ch * S * S + px] = SDM_FDIV(v, 255.0f);
        }
      }
    }
    if (F > 0 && comp_row) {
SDM_UNROLL
      for (int ch = 0; ch < 3; ++ch) {
        float* dst = comp_row + (int64_t)ch * S * S + ox * f;
        if (F == 2) {
          store2(dst, SDM_FDIV(vals[ch][0], 255.0f), SDM_FDIV(vals[ch][F > 1 ? 1 : 0], 255.0f));
        } else {
SDM_UNROLL
          for (int dx = 0; dx < (F > 0 ? F : 1); ++dx) dst[dx] = SDM_FDIV(vals[ch][dx], 255.0f);
        }
      }
    }
  }
  uint8_t* img = a.image + (((int64_t)b * O + oy) * O + ox) * 3;
SDM_UNROLL
  for (int ch = 0; ch < 3; ++ch) {
    const float t = floorf(SDM_FADD(SDM_FMUL(tot[ch], a.inv_ff), 0.5f));
    img[ch] = (uint8_t)fminf(fmaxf(t, 0.0f), 255.0f);
  }
  a.mask[((int64_t)b * O + oy) * O + ox] = asum >= a.mask_count ? 1 : 0;
}

// out_pixel with the foreground load path of sample s: one 32-bit load per RGBA pixel when its entry starts on a
// 4-byte boundary, else byte loads (decided per sample, on the device: no host look at the tables).
template <int F, bool SmemTaps>
SDM_HD void sample_pixel(const KernelArgs& a, const SampleView& s, const TapStage& st, int b, int ox, int oy, int lx,
                         int ly) {
  if ((reinterpret_cast<uintptr_t>(s.fg) & 3) == 0) {
    out_pixel<F, SmemTaps, true>(a, s, st, b, ox, oy, lx, ly);
  } else {
    out_pixel<F, SmemTaps, false>(a, s, st, b, ox, oy, lx, ly);
  }
}

// The kernel variant a factor f takes (the same choice on the GPU and in the host walk): calls
// run.template go<F, SmemTaps>().
template <typename Run>
void dispatch_variant(int f, Run& run) {
  switch (f) {
    case 1: run.template go<1, true>(); break;
    case 2: run.template go<2, true>(); break;
    case 4: run.template go<4, true>(); break;
    default:
      if (f <= kMaxSmemF) {
        run.template go<0, true>();
      } else {
        run.template go<0, false>();
      }
  }
}

// The launch grid: (out tiles in x, out tiles in y, sample slots); blocks of kTileX x kTileY threads.
struct GridShape {
  int64_t x, y, z;
};

inline GridShape grid_shape(const KernelArgs& a) {
  GridShape g;
  g.x = (a.O + kTileX - 1) / kTileX;
  g.y = (a.O + kTileY - 1) / kTileY;
  g.z = a.B < kMaxGridZ ? a.B : kMaxGridZ;
  return g;
}

// KernelArgs from the checked op arguments and the outputs (comp: nullptr when not wanted). Checks that the
// batch and the grid fit the GPU's limits (the host walk keeps them too).
KernelArgs kernel_args(const at::Tensor& bg_flat, const at::Tensor& bg_table, const at::Tensor& fg_flat,
                       const at::Tensor& fg_table, const at::Tensor& iparams, const at::Tensor& fparams,
                       int64_t compose, int64_t out, int64_t mask_count, at::Tensor& image, at::Tensor& mask,
                       at::Tensor* comp);

}  // namespace smalldepthmask
