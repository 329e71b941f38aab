// smalldepthmask::composite: the CPU kernel (one sample per task, at::parallel_for); the argument checks are in
// composite_checks.cpp.
//
// Per sample: the x taps of every compose column and the y taps of every compose row are computed once
// (float64, composite.h); then per compose row that the foreground reaches, a vertical pass combines its 4
// source rows over the columns the box reads, a horizontal pass gives the exact integer (A, C) per compose
// pixel, and the float32 blend, the f x f block averages, the mask and (optionally) the compose image follow.
// Rows and columns the foreground misses are the background alone (v = bg, exactly as the blend gives).
#include "composite.h"

#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

// Several instruction-set clones of the hot loop, picked at load time (the wheel runs on any x86-64).
// target_clones with "arch=x86-64-v4" needs GCC >= 11; older compilers build the baseline loop only.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__x86_64__) && !defined(SMALLDEPTHMASK_NO_CLONES)
#define SDM_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SDM_CLONES
#endif

namespace smalldepthmask {

std::tuple<at::Tensor, at::Tensor, at::Tensor> allocate_outputs(const at::Tensor& iparams, int64_t compose,
                                                               int64_t out, bool want_compose) {
  const int64_t B = iparams.size(0);
  auto u8 = iparams.options().dtype(at::kByte);
  at::Tensor image = at::empty({B, out, out, 3}, u8);
  at::Tensor mask = at::empty({B, out, out}, u8);
  at::Tensor comp = at::empty({want_compose ? B : 0, 3, compose, compose}, iparams.options().dtype(at::kFloat));
  return {image, mask, comp};
}

namespace {

struct SampleArgs {
  const uint8_t* bg;     // top-left of the crop window
  int64_t bg_stride;     // bytes per background row
  const uint8_t* fg;     // premultiplied RGBA, h x w
  int32_t h, w;
  double x0, y0, rx, ry;
  bool flip;
  int64_t S, O, f;
  int64_t mask_count;
  BlendConsts k;
  uint8_t* image;        // [O, O, 3]
  uint8_t* mask;         // [O, O]
  float* compose;        // [3, S, S] or nullptr
};

// 4 x int32 (GCC / Clang vector extension): one RGBA pixel of the vertical pass, or 4 taps' weights.
typedef int32_t v4i __attribute__((vector_size(16)));

struct Scratch {
  std::vector<int32_t> xfirst, xq, yfirst, yq;
  std::vector<uint8_t> yhit;
  std::vector<v4i> vrow;      // w + 2 * kTaps: one vertical-filtered source row (RGBA), padded both sides
  std::vector<v4i> acc;       // S: (C_r, C_g, C_b, A) of one compose row
  std::vector<float> v;       // f x 3 x S planar: blended rows
  std::vector<int32_t> a8;    // f x S: alpha8 of those rows
  std::vector<uint8_t> img;   // 3 x O planar: one out row of the image
};

template <typename T>
void ensure(std::vector<T>& vec, size_t n) {
  if (vec.size() < n) vec.assign(n, T{});
}

// One compose row of background: v = bg (what the blend gives where A = C = 0), alpha8 = 0.
SDM_HD void row_background(const uint8_t* __restrict bg, int64_t S, float* __restrict vr, float* __restrict vg,
                           float* __restrict vb, int32_t* __restrict a8) {
  for (int64_t px = 0; px < S; ++px) {
    vr[px] = (float)bg[px * 3];
    vg[px] = (float)bg[px * 3 + 1];
    vb[px] = (float)bg[px * 3 + 2];
    a8[px] = 0;
  }
}

// floor(t * inv + 0.5) clamped to [0, 255]. For t * inv + 0.5 >= 0, truncation is floor; below 0 both clamp to 0.
SDM_HD int32_t to_u8(float t, float inv) {
  const int32_t i = (int32_t)(t * inv + 0.5f);
  return i < 0 ? 0 : (i > 255 ? 255 : i);
}

SDM_CLONES void composite_sample(const SampleArgs& a, Scratch& sc) {
  const int64_t S = a.S, O = a.O, f = a.f;
  ensure(sc.xfirst, S); ensure(sc.xq, S * kTaps); ensure(sc.yfirst, S); ensure(sc.yq, S * kTaps);
  ensure(sc.yhit, S); ensure(sc.acc, S); ensure(sc.v, f * 3 * S); ensure(sc.a8, f * S);
  ensure(sc.img, 3 * O); ensure(sc.vrow, (size_t)a.w + 2 * kTaps);

  // Taps, and the span of compose columns / rows / source columns the foreground reaches.
  int64_t xlo = S, xhi = 0, jlo = a.w, jhi = 0;
  for (int64_t px = 0; px < S; ++px) {
    int32_t* q = &sc.xq[px * kTaps];
    if (safe_taps(px, a.x0, a.rx, a.w, a.flip, &sc.xfirst[px], q)) {
      xlo = std::min(xlo, px);
      xhi = px + 1;
      for (int k = 0; k < kTaps; ++k) {
        if (q[k] != 0) {
          jlo = std::min<int64_t>(jlo, sc.xfirst[px] + k);
          jhi = std::max<int64_t>(jhi, sc.xfirst[px] + k + 1);
        }
      }
    }
  }
  bool any_row = false;
  for (int64_t py = 0; py < S; ++py) {
    sc.yhit[py] = safe_taps(py, a.y0, a.ry, a.h, false, &sc.yfirst[py], &sc.yq[py * kTaps]);
    any_row = any_row || sc.yhit[py];
  }
  const bool any_fg = any_row && xlo < xhi;

  float* vbase = sc.v.data();
  int32_t* a8base = sc.a8.data();
  v4i* vrow = sc.vrow.data() + kTaps;  // vrow[j], j in [-kTaps, w + kTaps)
  v4i* __restrict acc4 = sc.acc.data();
  const int64_t fgrow = (int64_t)a.w * 4;

  for (int64_t oy = 0; oy < O; ++oy) {
    for (int64_t dy = 0; dy < f; ++dy) {
      const int64_t py = oy * f + dy;
      const uint8_t* __restrict bg = a.bg + (a.bg_stride * py);
      float* __restrict vr = vbase + (dy * 3) * S;
      float* __restrict vg = vr + S;
      float* __restrict vb = vg + S;
      int32_t* __restrict a8 = a8base + dy * S;
      row_background(bg, S, vr, vg, vb, a8);
      if (!any_fg || !sc.yhit[py]) continue;

      // Vertical pass over source columns [jlo, jhi): vrow = sum_l qy_l * fg[row_l] (exact int32).
      {
        const int32_t* qy = &sc.yq[py * kTaps];
        const int32_t fy = sc.yfirst[py];
        const uint8_t* rows[kTaps];
        int32_t wq[kTaps];
        for (int l = 0; l < kTaps; ++l) {
          const bool ok = qy[l] != 0;  // safe_taps zeroed the weights of rows outside [0, h)
          rows[l] = a.fg + (ok ? fy + l : 0) * fgrow + jlo * 4;
          wq[l] = ok ? qy[l] : 0;
        }
        const uint8_t* __restrict r0 = rows[0];
        const uint8_t* __restrict r1 = rows[1];
        const uint8_t* __restrict r2 = rows[2];
        const uint8_t* __restrict r3 = rows[3];
        const int32_t w0 = wq[0], w1 = wq[1], w2 = wq[2], w3 = wq[3];
        int32_t* __restrict dst = reinterpret_cast<int32_t*>(vrow + jlo);
        const int64_t n = (jhi - jlo) * 4;
        for (int64_t i = 0; i < n; ++i) {
          dst[i] = w0 * (int32_t)r0[i] + w1 * (int32_t)r1[i] + w2 * (int32_t)r2[i] + w3 * (int32_t)r3[i];
        }
      }
      // Horizontal pass over compose columns [xlo, xhi): (C, A) = sum_k qx_k * vrow[first + k], 4 lanes at once.
      // Columns whose taps all miss have weights 0 (their vrow reads are in the padded buffer, values unused).
      {
        const int32_t* __restrict xq = sc.xq.data();
        const int32_t* __restrict xf = sc.xfirst.data();
        for (int64_t px = xlo; px < xhi; ++px) {
          const v4i* src = vrow + xf[px];
          const int32_t* q = xq + px * kTaps;
          acc4[px] = src[0] * q[0] + src[1] * q[1] + src[2] * q[2] + src[3] * q[3];
        }
      }
      // Blend (float32, the reference's operation order: fc + (1 - fa) * bg).
      {
        const float ka = a.k.ka, kc = a.k.kc;
        const int32_t* __restrict acc = reinterpret_cast<const int32_t*>(acc4);
        for (int64_t px = xlo; px < xhi; ++px) {
          const float om = 1.0f - (float)acc[px * 4 + 3] * ka;
          vr[px] = (float)acc[px * 4] * kc + om * vr[px];
          vg[px] = (float)acc[px * 4 + 1] * kc + om * vg[px];
          vb[px] = (float)acc[px * 4 + 2] * kc + om * vb[px];
          a8[px] = (acc[px * 4 + 3] + (1 << (kAlphaShift - 1))) >> kAlphaShift;
        }
      }
    }

    // Outputs of out row oy: f x f block averages (sums in row-major order), mask, compose.
    uint8_t* __restrict img = a.image + oy * O * 3;
    uint8_t* __restrict msk = a.mask + oy * O;
    uint8_t* __restrict im = sc.img.data();
    const float inv = a.k.inv_ff;
    const int64_t mc = a.mask_count;
    if (f == 1) {
      for (int ch = 0; ch < 3; ++ch) {
        const float* __restrict r = vbase + ch * S;
        uint8_t* __restrict d = im + ch * O;
        for (int64_t ox = 0; ox < O; ++ox) d[ox] = (uint8_t)to_u8(r[ox], inv);
      }
      for (int64_t ox = 0; ox < O; ++ox) msk[ox] = (int64_t)a8base[ox] >= mc ? 1 : 0;
    } else if (f == 2) {
      for (int ch = 0; ch < 3; ++ch) {
        const float* __restrict r0 = vbase + ch * S;
        const float* __restrict r1 = vbase + (3 + ch) * S;
        uint8_t* __restrict d = im + ch * O;
        for (int64_t ox = 0; ox < O; ++ox) {
          d[ox] = (uint8_t)to_u8(((r0[2 * ox] + r0[2 * ox + 1]) + r1[2 * ox]) + r1[2 * ox + 1], inv);
        }
      }
      const int32_t* __restrict m0 = a8base;
      const int32_t* __restrict m1 = a8base + S;
      for (int64_t ox = 0; ox < O; ++ox) {
        msk[ox] = (int64_t)(m0[2 * ox] + m0[2 * ox + 1] + m1[2 * ox] + m1[2 * ox + 1]) >= mc ? 1 : 0;
      }
    } else {
      for (int ch = 0; ch < 3; ++ch) {
        uint8_t* __restrict d = im + ch * O;
        for (int64_t ox = 0; ox < O; ++ox) {
          float t = vbase[ch * S + ox * f];
          for (int64_t dx = 1; dx < f; ++dx) t = t + vbase[ch * S + ox * f + dx];
          for (int64_t dy = 1; dy < f; ++dy) {
            const float* r = vbase + (dy * 3 + ch) * S + ox * f;
            for (int64_t dx = 0; dx < f; ++dx) t = t + r[dx];
          }
          d[ox] = (uint8_t)to_u8(t, inv);
        }
      }
      for (int64_t ox = 0; ox < O; ++ox) {
        int64_t s = 0;
        for (int64_t dy = 0; dy < f; ++dy) {
          for (int64_t dx = 0; dx < f; ++dx) s += a8base[dy * S + ox * f + dx];
        }
        msk[ox] = s >= mc ? 1 : 0;
      }
    }
    for (int64_t ox = 0; ox < O; ++ox) {
      img[ox * 3] = im[ox];
      img[ox * 3 + 1] = im[O + ox];
      img[ox * 3 + 2] = im[2 * O + ox];
    }
    if (a.compose != nullptr) {
      for (int64_t dy = 0; dy < f; ++dy) {
        for (int ch = 0; ch < 3; ++ch) {
          const float* __restrict src = vbase + (dy * 3 + ch) * S;
          float* __restrict dst = a.compose + (ch * S + oy * f + dy) * S;
          for (int64_t px = 0; px < S; ++px) dst[px] = src[px] / 255.0f;
        }
      }
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> composite_cpu(
    const at::Tensor& bg_flat, const at::Tensor& bg_table, const at::Tensor& fg_flat, const at::Tensor& fg_table,
    const at::Tensor& iparams, const at::Tensor& fparams, int64_t compose, int64_t out, int64_t mask_count,
    bool want_compose) {
  check_composite_args(bg_flat, bg_table, fg_flat, fg_table, iparams, fparams, compose, out, mask_count);
  TORCH_CHECK(bg_flat.device().is_cpu(), "composite_cpu: tensors are on ", bg_flat.device());
  auto [image, mask, comp] = allocate_outputs(iparams, compose, out, want_compose);
  const int64_t B = iparams.size(0);
  if (B == 0) return {image, mask, comp};
  const int64_t S = compose, O = out, f = compose / out;
  const uint8_t* bgd = bg_flat.data_ptr<uint8_t>();
  const uint8_t* fgd = fg_flat.data_ptr<uint8_t>();
  const int64_t* bt = bg_table.data_ptr<int64_t>();
  const int64_t* ft = fg_table.data_ptr<int64_t>();
  const int64_t* ip = iparams.data_ptr<int64_t>();
  const double* fp = fparams.data_ptr<double>();
  uint8_t* imd = image.data_ptr<uint8_t>();
  uint8_t* mkd = mask.data_ptr<uint8_t>();
  float* cpd = want_compose ? comp.data_ptr<float>() : nullptr;
  const BlendConsts k = blend_consts(f);
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    Scratch sc;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t bg = ip[b * 5], cy = ip[b * 5 + 1], cx = ip[b * 5 + 2], e = ip[b * 5 + 3];
      SampleArgs a;
      a.bg_stride = bt[bg * 3 + 2] * 3;
      a.bg = bgd + bt[bg * 3] + cy * a.bg_stride + cx * 3;
      a.fg = fgd + ft[e * 3];
      a.h = (int32_t)ft[e * 3 + 1];
      a.w = (int32_t)ft[e * 3 + 2];
      a.x0 = fp[b * 4]; a.y0 = fp[b * 4 + 1]; a.rx = fp[b * 4 + 2]; a.ry = fp[b * 4 + 3];
      a.flip = ip[b * 5 + 4] != 0;
      a.S = S; a.O = O; a.f = f;
      a.mask_count = mask_count;
      a.k = k;
      a.image = imd + b * O * O * 3;
      a.mask = mkd + b * O * O;
      a.compose = cpd ? cpd + b * 3 * S * S : nullptr;
      composite_sample(a, sc);
    }
  });
  return {image, mask, comp};
}

std::tuple<at::Tensor, at::Tensor> axis_taps_cpu(const at::Tensor& pos0, const at::Tensor& ratio,
                                                 const at::Tensor& size, const at::Tensor& flip, int64_t n) {
  check_axis_taps_args(pos0, ratio, size, flip, n);
  const int64_t B = pos0.size(0);
  at::Tensor index = at::empty({B, n, kTaps}, pos0.options().dtype(at::kLong));
  at::Tensor weight = at::empty({B, n, kTaps}, pos0.options().dtype(at::kLong));
  int64_t* id = index.data_ptr<int64_t>();
  int64_t* wd = weight.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t p = 0; p < n; ++p) {
      int64_t first;
      int32_t q[kTaps];
      axis_taps(p, pos0.data_ptr<double>()[b], ratio.data_ptr<double>()[b], (double)size.data_ptr<int64_t>()[b],
                flip.data_ptr<bool>()[b], &first, q);
      for (int k = 0; k < kTaps; ++k) {
        id[(b * n + p) * kTaps + k] = first + k;
        wd[(b * n + p) * kTaps + k] = q[k];
      }
    }
  }
  return {index, weight};
}

}  // namespace smalldepthmask
