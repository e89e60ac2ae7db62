// Shared definitions of the CIF ops (CPU and CUDA).  The semantics are documented in
// w2p/cif.py; this header holds the per-row "plan" so that the CPU kernel, the CUDA kernel
// and the Python backends make bit-identical firing decisions from the fp64 running sum.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#if defined(__CUDACC__)
#define W2P_HD __host__ __device__ __forceinline__
#else
#define W2P_HD inline
#endif

namespace w2p {
namespace cif {

// Number of thresholds k*beta (k >= 1) reached by the running sum s, i.e. #{k >= 1 : k*beta <= s}.
// The boundaries are the double products k*beta (the same values Python computes), and the
// floor() guess is corrected so that division rounding can never disagree with them.
W2P_HD int64_t count_fires(double s, double beta) {
  if (!(s >= beta)) return 0;
  int64_t n = static_cast<int64_t>(floor(s / beta));
  while (static_cast<double>(n + 1) * beta <= s) ++n;
  while (n > 0 && static_cast<double>(n) * beta > s) --n;
  return n;
}

// What one batch row produces.  Outputs i < m fire naturally and integrate [i*beta, (i+1)*beta];
// output m (if m < n_out) is the "end" output that integrates [m*beta, total] times end_scale:
// the forced last fire of training (target given) or the normalised tail of inference.
// Outputs m < i < n_out (training, alphas summing to less than target*beta) are zero.
struct RowPlan {
  double total;      // S_L, the fp64 sum of the row's alphas
  int64_t m;         // index of the end output
  int64_t n_out;     // number of outputs of the row
  double end_scale;  // beta / r for the tail, else 1
  double tail_r;     // r = leftover weight of a fired tail (its normaliser), 0 otherwise
};

W2P_HD RowPlan make_plan(double total, double beta, int64_t target, double tail_threshold) {
  RowPlan p;
  p.total = total;
  const int64_t n = count_fires(total, beta);
  if (target >= 0) {  // training: exactly `target` outputs, the last absorbs the remainder
    p.m = n < target - 1 ? n : target - 1;
    p.n_out = target;
    p.end_scale = 1.0;
    p.tail_r = 0.0;
  } else {  // inference: natural fires plus an optional tail
    p.m = n;
    const double r = total - static_cast<double>(n) * beta;
    const bool tail = r > 0.0 && r >= tail_threshold;
    p.n_out = n + (tail ? 1 : 0);
    p.end_scale = tail ? beta / r : 1.0;
    p.tail_r = tail ? r : 0.0;
  }
  return p;
}

// Integration interval [lo, hi] and scale of output i (< n_out); false when it gets no weight.
W2P_HD bool output_interval(const RowPlan& p, int64_t i, double beta, double* lo, double* hi, double* scale) {
  if (i < p.m) {
    *lo = static_cast<double>(i) * beta;
    *hi = static_cast<double>(i + 1) * beta;
    *scale = 1.0;
    return true;
  }
  if (i == p.m) {
    *lo = static_cast<double>(i) * beta;
    *hi = p.total;
    *scale = p.end_scale;
    return true;
  }
  return false;
}

// Where output i's integration ends: a regular fire ends at (i+1)*beta, the others at the total.
W2P_HD double output_end(const RowPlan& p, int64_t i, double beta) {
  return i < p.m ? static_cast<double>(i + 1) * beta : p.total;
}

// The output that is open (integrating) at running sum s; weight added at s goes there.
W2P_HD int64_t open_index(const RowPlan& p, double s, double beta) {
  const int64_t k = count_fires(s, beta);
  return k < p.m ? k : p.m;
}

// Weight of frame (s0, s1] in output interval [lo, hi].
W2P_HD double overlap(double s0, double s1, double lo, double hi) {
  const double a = s1 < hi ? s1 : hi;
  const double b = s0 > lo ? s0 : lo;
  return a > b ? a - b : 0.0;
}

// First t in [0, n) with s[t] >= x (n if none); s is non-decreasing.
W2P_HD int64_t lower_bound(const double* s, int64_t n, double x) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (s[mid] < x) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// First t in [0, n) with s[t] > x (n if none).
W2P_HD int64_t upper_bound(const double* s, int64_t n, double x) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (s[mid] <= x) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// Entry checks shared by both devices (shapes, dtypes, devices, contiguity, scalars).  Value
// checks (lengths <= T, alphas >= 0, target_lengths >= 0) are done where the values are read.
inline void check_inputs(const char* op, const at::Tensor& hidden, const at::Tensor& alphas,
                         const at::Tensor& lengths, double threshold,
                         const std::optional<at::Tensor>& target_lengths, double tail_threshold,
                         c10::DeviceType device_type) {
  TORCH_CHECK(hidden.dim() == 3, op, ": hidden must have shape (B, T, C), got ", hidden.sizes());
  const int64_t B = hidden.size(0), T = hidden.size(1);
  TORCH_CHECK(alphas.dim() == 2 && alphas.size(0) == B && alphas.size(1) == T, op,
              ": alphas must have shape (B, T) = (", B, ", ", T, ") to match hidden, got ", alphas.sizes());
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == B, op, ": lengths must have shape (B,) = (", B,
              ",), got ", lengths.sizes());
  TORCH_CHECK(lengths.scalar_type() == at::kLong, op, ": lengths must be int64 (torch.long), got ",
              lengths.scalar_type());
  const auto dev = hidden.device();
  TORCH_CHECK(dev.type() == device_type, op, ": hidden is on ", dev, " but this is the ",
              c10::DeviceTypeName(device_type), " kernel; move all inputs to one device");
  TORCH_CHECK(alphas.device() == dev && lengths.device() == dev, op,
              ": all inputs must be on one device: hidden on ", dev, ", alphas on ", alphas.device(),
              ", lengths on ", lengths.device());
  if (target_lengths.has_value()) {
    const at::Tensor& tl = *target_lengths;
    TORCH_CHECK(tl.dim() == 1 && tl.size(0) == B, op, ": target_lengths must have shape (B,) = (", B,
                ",), got ", tl.sizes());
    TORCH_CHECK(tl.scalar_type() == at::kLong, op, ": target_lengths must be int64 (torch.long), got ",
                tl.scalar_type());
    TORCH_CHECK(tl.device() == dev, op, ": target_lengths is on ", tl.device(), " but hidden on ", dev);
  }
  const auto ht = hidden.scalar_type(), at_ = alphas.scalar_type();
  if (device_type == c10::DeviceType::CPU) {
    TORCH_CHECK(ht == at::kFloat || ht == at::kDouble, op,
                ": on CPU hidden must be float32 or float64, got ", ht);
    TORCH_CHECK(at_ == ht, op, ": alphas dtype (", at_, ") must equal hidden dtype (", ht, ") on CPU");
  } else {
    TORCH_CHECK(ht == at::kFloat || ht == at::kDouble || ht == at::kHalf || ht == at::kBFloat16, op,
                ": on CUDA hidden must be float32, float64, float16 or bfloat16, got ", ht);
    TORCH_CHECK(at_ == ht || at_ == at::kFloat, op, ": alphas dtype (", at_,
                ") must equal hidden dtype (", ht, ") or be float32");
  }
  TORCH_CHECK(hidden.is_contiguous(), op, ": hidden must be contiguous (call .contiguous())");
  TORCH_CHECK(alphas.is_contiguous(), op, ": alphas must be contiguous (call .contiguous())");
  TORCH_CHECK(lengths.is_contiguous(), op, ": lengths must be contiguous");
  TORCH_CHECK(std::isfinite(threshold) && threshold > 0.0, op, ": threshold must be finite and > 0, got ",
              threshold);
  TORCH_CHECK(!std::isnan(tail_threshold), op, ": tail_threshold must not be NaN");
}

inline void check_backward_inputs(const char* op, const at::Tensor& grad_out, const at::Tensor& hidden,
                                  const at::Tensor& out) {
  TORCH_CHECK(grad_out.dim() == 3 && grad_out.size(0) == hidden.size(0) && grad_out.size(2) == hidden.size(2), op,
              ": grad_out must have shape (B, U, C) with B, C of hidden ", hidden.sizes(), ", got ",
              grad_out.sizes());
  TORCH_CHECK(out.sizes() == grad_out.sizes(), op, ": out ", out.sizes(), " and grad_out ", grad_out.sizes(),
              " must have the same shape");
  TORCH_CHECK(grad_out.scalar_type() == hidden.scalar_type() && out.scalar_type() == hidden.scalar_type(), op,
              ": grad_out and out must have hidden's dtype ", hidden.scalar_type());
  TORCH_CHECK(grad_out.device() == hidden.device() && out.device() == hidden.device(), op,
              ": grad_out and out must be on hidden's device ", hidden.device());
  TORCH_CHECK(grad_out.is_contiguous() && out.is_contiguous(), op, ": grad_out and out must be contiguous");
}

}  // namespace cif
}  // namespace w2p
