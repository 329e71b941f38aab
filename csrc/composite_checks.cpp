// smalldepthmask::composite: the argument checks of every op. Shapes, dtypes and devices read no tensor values
// (the CUDA op runs only those: no device sync); the value checks read CPU tensors only (the CPU ops, and the
// host before a CUDA upload: check_composite_values, composite.py's device_params, Bank.to).
#include "composite.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace smalldepthmask {

namespace {

void check_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t dim, int64_t cols) {
  TORCH_CHECK(t.defined(), "smalldepthmask: ", name, " is undefined");
  TORCH_CHECK(t.scalar_type() == dtype, "smalldepthmask: ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dim, "smalldepthmask: ", name, " must have ", dim, " dimension(s), got ", t.dim(),
              " (shape ", t.sizes(), ")");
  if (cols >= 0) {
    TORCH_CHECK(t.size(1) == cols, "smalldepthmask: ", name, " must have shape [n, ", cols, "], got ", t.sizes());
  }
  TORCH_CHECK(t.is_contiguous(), "smalldepthmask: ", name, " must be contiguous (shape ", t.sizes(), ", strides ",
              t.strides(), ")");
}

void check_table(const int64_t* tab, int64_t rows, int64_t channels, int64_t flat_size, const char* name,
                 const char* flat_name) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t off = tab[r * 3], h = tab[r * 3 + 1], w = tab[r * 3 + 2];
    TORCH_CHECK(h >= 1 && w >= 1 && h <= kMaxSide && w <= kMaxSide, "composite: ", name, "[", r,
                "] has size (H, W) = (", h, ", ", w, "); each must be in [1, ", kMaxSide, "]");
    TORCH_CHECK(off >= 0 && off <= flat_size && h * w * channels <= flat_size - off, "composite: ", name, "[", r,
                "] = (offset ", off, ", H ", h, ", W ", w, ") needs ", name, " bytes [", off, ", ",
                off + h * w * channels, ") but ", flat_name, " has ", flat_size);
  }
}

}  // namespace

void check_composite_shapes(const at::Tensor& bg_flat, const at::Tensor& bg_table, const at::Tensor& fg_flat,
                            const at::Tensor& fg_table, const at::Tensor& iparams, const at::Tensor& fparams,
                            int64_t compose, int64_t out, int64_t mask_count) {
  check_tensor(bg_flat, "bg_flat", at::kByte, 1, -1);
  check_tensor(bg_table, "bg_table", at::kLong, 2, 3);
  check_tensor(fg_flat, "fg_flat", at::kByte, 1, -1);
  check_tensor(fg_table, "fg_table", at::kLong, 2, 3);
  check_tensor(iparams, "iparams", at::kLong, 2, 5);
  check_tensor(fparams, "fparams", at::kDouble, 2, 4);
  const at::Tensor* all[] = {&bg_table, &fg_flat, &fg_table, &iparams, &fparams};
  const char* names[] = {"bg_table", "fg_flat", "fg_table", "iparams", "fparams"};
  for (int i = 0; i < 5; ++i) {
    TORCH_CHECK(all[i]->device() == bg_flat.device(), "composite: ", names[i], " is on ", all[i]->device(),
                " but bg_flat is on ", bg_flat.device(), "; all tensors must be on one device");
  }
  TORCH_CHECK(fparams.size(0) == iparams.size(0), "composite: fparams has ", fparams.size(0),
              " rows but iparams has ", iparams.size(0), " (one row per sample in both)");
  TORCH_CHECK(compose >= 1 && compose <= (1 << 15), "composite: compose = ", compose, " must be in [1, 32768]");
  TORCH_CHECK(out >= 1, "composite: out = ", out, " must be >= 1");
  TORCH_CHECK(compose % out == 0, "composite: compose = ", compose, " must be a multiple of out = ", out);
  TORCH_CHECK(mask_count >= 0, "composite: mask_count = ", mask_count, " must be >= 0");
}

void check_composite_values(const at::Tensor& bg_table, const at::Tensor& fg_table, const at::Tensor& iparams,
                            const at::Tensor& fparams, int64_t bg_numel, int64_t fg_numel, int64_t compose,
                            bool check_tables) {
  check_tensor(bg_table, "bg_table", at::kLong, 2, 3);
  check_tensor(fg_table, "fg_table", at::kLong, 2, 3);
  check_tensor(iparams, "iparams", at::kLong, 2, 5);
  check_tensor(fparams, "fparams", at::kDouble, 2, 4);
  const at::Tensor* all[] = {&bg_table, &fg_table, &iparams, &fparams};
  for (const at::Tensor* t : all) {
    TORCH_CHECK(t->device().is_cpu(), "check_composite_values: the tables and params must be CPU tensors, got ",
                t->device(), " (validate on the host, before the upload)");
  }
  TORCH_CHECK(fparams.size(0) == iparams.size(0), "composite: fparams has ", fparams.size(0),
              " rows but iparams has ", iparams.size(0), " (one row per sample in both)");
  const int64_t B = iparams.size(0), m = bg_table.size(0), E = fg_table.size(0);
  const int64_t* btd = bg_table.data_ptr<int64_t>();
  if (check_tables) {
    check_table(btd, m, 3, bg_numel, "bg_table", "bg_flat");
    check_table(fg_table.data_ptr<int64_t>(), E, 4, fg_numel, "fg_table", "fg_flat");
  }
  const int64_t* ipd = iparams.data_ptr<int64_t>();
  const double* fpd = fparams.data_ptr<double>();
  static const char* fnames[] = {"x0", "y0", "rx", "ry"};
  for (int64_t b = 0; b < B; ++b) {
    const int64_t bg = ipd[b * 5], cy = ipd[b * 5 + 1], cx = ipd[b * 5 + 2], entry = ipd[b * 5 + 3];
    TORCH_CHECK(bg >= 0 && bg < m, "composite: iparams[", b, ", 0] (background id) = ", bg,
                " is out of range: bg_table has ", m, " rows");
    TORCH_CHECK(entry >= 0 && entry < E, "composite: iparams[", b, ", 3] (foreground entry) = ", entry,
                " is out of range: fg_table has ", E, " rows");
    const int64_t H = btd[bg * 3 + 1], W = btd[bg * 3 + 2];
    TORCH_CHECK(cy >= 0 && cy <= H - compose, "composite: iparams[", b, ", 1] (crop_y) = ", cy,
                ": the crop window [crop_y, crop_y + ", compose, ") must lie inside background ", bg,
                " of height ", H);
    TORCH_CHECK(cx >= 0 && cx <= W - compose, "composite: iparams[", b, ", 2] (crop_x) = ", cx,
                ": the crop window [crop_x, crop_x + ", compose, ") must lie inside background ", bg,
                " of width ", W);
    for (int j = 0; j < 4; ++j) {
      const double v = fpd[b * 4 + j];
      TORCH_CHECK(std::isfinite(v) && std::fabs(v) <= kParamLimit, "composite: fparams[", b, ", ", j, "] (",
                  fnames[j], ") = ", v, " must be finite with magnitude <= ", kParamLimit);
    }
  }
}

void check_composite_args(const at::Tensor& bg_flat, const at::Tensor& bg_table, const at::Tensor& fg_flat,
                          const at::Tensor& fg_table, const at::Tensor& iparams, const at::Tensor& fparams,
                          int64_t compose, int64_t out, int64_t mask_count) {
  check_composite_shapes(bg_flat, bg_table, fg_flat, fg_table, iparams, fparams, compose, out, mask_count);
  TORCH_CHECK(bg_flat.device().is_cpu(), "composite: check_composite_args reads values on the host; tensors are on ",
              bg_flat.device());
  check_composite_values(bg_table, fg_table, iparams, fparams, bg_flat.numel(), fg_flat.numel(), compose, true);
}

void check_axis_taps_args(const at::Tensor& pos0, const at::Tensor& ratio, const at::Tensor& size,
                          const at::Tensor& flip, int64_t n) {
  check_tensor(pos0, "pos0", at::kDouble, 1, -1);
  check_tensor(ratio, "ratio", at::kDouble, 1, -1);
  check_tensor(size, "size", at::kLong, 1, -1);
  check_tensor(flip, "flip", at::kBool, 1, -1);
  const int64_t B = pos0.size(0);
  TORCH_CHECK(ratio.size(0) == B && size.size(0) == B && flip.size(0) == B, "axis_taps: pos0, ratio, size, flip ",
              "must have one length, got ", B, ", ", ratio.size(0), ", ", size.size(0), ", ", flip.size(0));
  TORCH_CHECK(ratio.device() == pos0.device() && size.device() == pos0.device() && flip.device() == pos0.device(),
              "axis_taps: all tensors must be on one device");
  TORCH_CHECK(n >= 0 && n <= (1 << 20), "axis_taps: n = ", n, " must be in [0, 2^20]");
  if (pos0.device().is_cpu()) {
    for (int64_t b = 0; b < B; ++b) {
      const double p = pos0.data_ptr<double>()[b], r = ratio.data_ptr<double>()[b];
      TORCH_CHECK(std::isfinite(p) && std::fabs(p) <= kParamLimit, "axis_taps: pos0[", b, "] = ", p,
                  " must be finite with magnitude <= ", kParamLimit);
      TORCH_CHECK(std::isfinite(r) && std::fabs(r) <= kParamLimit, "axis_taps: ratio[", b, "] = ", r,
                  " must be finite with magnitude <= ", kParamLimit);
    }
  }
}

}  // namespace smalldepthmask
