// smalldepthmask::composite: one fused pass per batch (crop, resample + flip + place, blend, downsample, mask).
//
// The math is defined in smalldepthmask/composite.py (module docstring); `composite_reference` there is the
// oracle and these kernels must match it bit for bit on the mask (and, in practice, on everything else).
// Build with -ffp-contract=off (C++) and --fmad=false (CUDA): no fused multiply-add may change a rounding.
#pragma once

#include <cmath>
#include <cstdint>

#include <ATen/core/Tensor.h>

#if defined(__CUDACC__)
#define SDM_HD __host__ __device__ __forceinline__
#define SDM_UNROLL _Pragma("unroll")
#else
#define SDM_HD inline
#define SDM_UNROLL
#endif

// Correctly rounded float64 operations, spelled out on the device so that no compiler flag can fuse them.
#if defined(__CUDA_ARCH__)
#define SDM_DADD(a, b) __dadd_rn((a), (b))
#define SDM_DSUB(a, b) __dsub_rn((a), (b))
#define SDM_DMUL(a, b) __dmul_rn((a), (b))
#define SDM_DDIV(a, b) __ddiv_rn((a), (b))
#else
#define SDM_DADD(a, b) ((a) + (b))
#define SDM_DSUB(a, b) ((a) - (b))
#define SDM_DMUL(a, b) ((a) * (b))
#define SDM_DDIV(a, b) ((a) / (b))
#endif

namespace smalldepthmask {

constexpr int kTaps = 4;            // taps per axis (the plan keeps the per-sample ratio under 2)
constexpr int kWeightOne = 1024;    // quantized weights per axis sum to this
constexpr int kAlphaShift = 20;     // log2(kWeightOne^2)
constexpr double kParamLimit = 1e6; // |x0|, |y0|, |rx|, |ry| bound (keeps every tap index in int64 range)
constexpr int64_t kMaxSide = 1 << 24;  // image sides in the tables (pixel offsets within a row stay in int32)

// Quantized taps of one compose pixel along one axis.
//   first: index of tap 0 (tap k reads source pixel first + k); q: integer weights, summing to 1024.
// Exactly the reference's axis_taps: IEEE float64, this operation order, no FMA.
SDM_HD void axis_taps(int64_t p, double pos0, double ratio, double size, bool flip, int64_t* first_out,
                      int32_t q[kTaps]) {
  double u = SDM_DMUL(SDM_DSUB(SDM_DADD((double)p, 0.5), pos0), ratio);
  if (flip) u = SDM_DSUB(size, u);
  const double c = SDM_DSUB(u, 0.5);
  const double s = ratio < 1.0 ? 1.0 : ratio;  // torch.clamp(ratio, min=1)
  const double first = SDM_DADD(floor(SDM_DSUB(c, s)), 1.0);
  double t[kTaps];
SDM_UNROLL
  for (int k = 0; k < kTaps; ++k) {
    const double idx = SDM_DADD(first, (double)k);
    const double tk = SDM_DSUB(1.0, SDM_DDIV(fabs(SDM_DSUB(idx, c)), s));
    t[k] = tk < 0.0 ? 0.0 : tk;  // torch.clamp(min=0)
  }
  double total = t[0];
SDM_UNROLL
  for (int k = 1; k < kTaps; ++k) total = SDM_DADD(total, t[k]);
  int32_t sum = 0;
  int big = 0;
SDM_UNROLL
  for (int k = 0; k < kTaps; ++k) {
    q[k] = (int32_t)floor(SDM_DADD(SDM_DMUL(SDM_DDIV(t[k], total), (double)kWeightOne), 0.5));
    sum += q[k];
    if (q[k] > q[big]) big = k;  // first largest
  }
  q[big] = kWeightOne - (sum - q[big]);
  *first_out = (int64_t)first;
}

// Taps of one compose pixel made safe to read without bounds checks: taps outside [0, size) get weight 0, and
// `first` is clamped to [-kTaps, size] (only ever moves when every tap already misses). Returns whether any
// tap with a nonzero weight reads the source.
SDM_HD bool safe_taps(int64_t p, double pos0, double ratio, int64_t size, bool flip, int32_t* first_out,
                      int32_t q[kTaps]) {
  int64_t first;
  axis_taps(p, pos0, ratio, (double)size, flip, &first, q);
  bool hit = false;
SDM_UNROLL
  for (int k = 0; k < kTaps; ++k) {
    const int64_t i = first + k;
    if (i < 0 || i >= size) q[k] = 0;
    hit = hit || q[k] != 0;
  }
  if (first < -kTaps) first = -kTaps;
  if (first > size) first = size;
  *first_out = (int32_t)first;
  return hit;
}

// Blend constants, as the reference computes them (a Python double rounded to float32).
struct BlendConsts {
  float ka;       // 1 / (255 * 2^20)
  float kc;       // 1 / 2^20
  float inv_ff;   // 1 / f^2
};

inline BlendConsts blend_consts(int64_t f) {
  BlendConsts k;
  k.ka = (float)(1.0 / (255.0 * (double)(1 << kAlphaShift)));
  k.kc = (float)(1.0 / (double)(1 << kAlphaShift));
  k.inv_ff = (float)(1.0 / (double)(f * f));
  return k;
}

// Shapes, dtypes, devices, contiguity and the scalar arguments; reads no tensor values (no device sync).
void check_composite_shapes(const at::Tensor& bg_flat, const at::Tensor& bg_table, const at::Tensor& fg_flat,
                            const at::Tensor& fg_table, const at::Tensor& iparams, const at::Tensor& fparams,
                            int64_t compose, int64_t out, int64_t mask_count);

// The values, on CPU tensors only: table extents against the flat buffers' sizes (when check_tables), then ids,
// crop windows and parameters. bg_table [m, 3], fg_table [E, 3], iparams [B, 5] int64; fparams [B, 4] float64.
// The CUDA path calls it on host copies before the upload (composite.py, Bank.to).
void check_composite_values(const at::Tensor& bg_table, const at::Tensor& fg_table, const at::Tensor& iparams,
                            const at::Tensor& fparams, int64_t bg_numel, int64_t fg_numel, int64_t compose,
                            bool check_tables);

// Both of the above, for CPU tensors (the CPU kernels).
void check_composite_args(const at::Tensor& bg_flat, const at::Tensor& bg_table, const at::Tensor& fg_flat,
                          const at::Tensor& fg_table, const at::Tensor& iparams, const at::Tensor& fparams,
                          int64_t compose, int64_t out, int64_t mask_count);

// Allocates (image [B, O, O, 3] u8, mask [B, O, O] u8, compose [B, 3, S, S] f32 or [0, 3, S, S]).
std::tuple<at::Tensor, at::Tensor, at::Tensor> allocate_outputs(const at::Tensor& iparams, int64_t compose,
                                                               int64_t out, bool want_compose);

std::tuple<at::Tensor, at::Tensor, at::Tensor> composite_cpu(
    const at::Tensor& bg_flat, const at::Tensor& bg_table, const at::Tensor& fg_flat, const at::Tensor& fg_table,
    const at::Tensor& iparams, const at::Tensor& fparams, int64_t compose, int64_t out, int64_t mask_count,
    bool want_compose);

// The CUDA kernel's body (composite_pixel.h) walked on the host as the GPU grid runs it (a test hook; same
// arguments and results as composite_cpu). composite_device_body.cpp.
std::tuple<at::Tensor, at::Tensor, at::Tensor> composite_device_body(
    const at::Tensor& bg_flat, const at::Tensor& bg_table, const at::Tensor& fg_flat, const at::Tensor& fg_table,
    const at::Tensor& iparams, const at::Tensor& fparams, int64_t compose, int64_t out, int64_t mask_count,
    bool want_compose);

// The quantized taps of composite.py's axis_taps (a test hook for the shared tap math): pos0, ratio [B] float64,
// size [B] int64, flip [B] bool -> (index [B, n, 4] int64 = first + k, weight [B, n, 4] int64), unmasked.
void check_axis_taps_args(const at::Tensor& pos0, const at::Tensor& ratio, const at::Tensor& size,
                          const at::Tensor& flip, int64_t n);
std::tuple<at::Tensor, at::Tensor> axis_taps_cpu(const at::Tensor& pos0, const at::Tensor& ratio,
                                                 const at::Tensor& size, const at::Tensor& flip, int64_t n);

#ifdef SMALLDEPTHMASK_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> axis_taps_cuda(const at::Tensor& pos0, const at::Tensor& ratio,
                                                  const at::Tensor& size, const at::Tensor& flip, int64_t n);
std::tuple<at::Tensor, at::Tensor, at::Tensor> composite_cuda(
    const at::Tensor& bg_flat, const at::Tensor& bg_table, const at::Tensor& fg_flat, const at::Tensor& fg_table,
    const at::Tensor& iparams, const at::Tensor& fparams, int64_t compose, int64_t out, int64_t mask_count,
    bool want_compose);
#endif

}  // namespace smalldepthmask
