// CPU kernels of the CIF ops: forward (one task per output vector) and analytic backward
// (one task per frame, then a reverse prefix sum per row).  All firing decisions come from
// an fp64 running sum (no drift at T = 5000); channel loops are plain and vectorisable.
#include <algorithm>
#include <cstring>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "../cif_common.h"

namespace w2p {
namespace cif {
namespace {

constexpr int64_t kGrainSize = 32768;  // ATen's at::internal::GRAIN_SIZE
inline int64_t row_grain(int64_t T) { return std::max<int64_t>(1, kGrainSize / std::max<int64_t>(T, 1)); }
// an output / a frame touches ~2-4 rows of C values
inline int64_t vec_grain(int64_t C) { return std::max<int64_t>(1, kGrainSize / (4 * std::max<int64_t>(C, 1))); }

template <typename scalar_t> struct Acc { using type = scalar_t; };  // float -> float, double -> double

// Dot product with 8 independent partial sums so the compiler can vectorise it without -ffast-math.
template <typename scalar_t>
inline scalar_t dot(const scalar_t* a, const scalar_t* b, int64_t n) {
  scalar_t s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t c = 0;
  for (; c + 8 <= n; c += 8)
    for (int j = 0; j < 8; ++j) s[j] += a[c + j] * b[c + j];
  for (; c < n; ++c) s[0] += a[c] * b[c];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

// Per-row running sums S (B, T) in fp64 and the row plans.  Validates lengths, target lengths
// and alpha values (finite, >= 0) while reading them, naming the offending row / frame.
template <typename scalar_t>
std::vector<RowPlan> scan_rows(const at::Tensor& alphas, const int64_t* len, const int64_t* target, double beta,
                               double tail_threshold, double* S) {
  const int64_t B = alphas.size(0), T = alphas.size(1);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(len[b] >= 0 && len[b] <= T, "cif: lengths[", b, "] = ", len[b], " is outside [0, T = ", T,
                "]; lengths must count the valid frames of each row");
    if (target) TORCH_CHECK(target[b] >= 0, "cif: target_lengths[", b, "] = ", target[b], " is negative");
  }
  const scalar_t* a = alphas.data_ptr<scalar_t>();
  std::vector<RowPlan> plans(B);
  // grains follow ATen's (32768 elements): waking a second thread for less work costs more
  // than it saves, badly so on a busy machine
  at::parallel_for(0, B, row_grain(T), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const scalar_t* ar = a + b * T;
      double* s = S + b * T;
      double run = 0.0;
      for (int64_t t = 0; t < len[b]; ++t) {
        const double v = static_cast<double>(ar[t]);
        TORCH_CHECK(std::isfinite(v) && v >= 0.0, "cif: alphas must be finite and >= 0, got alphas[", b, ", ", t,
                    "] = ", v);
        run += v;
        s[t] = run;
      }
      for (int64_t t = len[b]; t < T; ++t) s[t] = run;  // padding carries no weight
      plans[b] = make_plan(run, beta, target ? target[b] : -1, tail_threshold);
    }
  });
  return plans;
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& hidden, const double* S, const std::vector<RowPlan>& plans, const int64_t* len,
                    double beta, at::Tensor& out, at::Tensor& fire) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t T = hidden.size(1), C = hidden.size(2), U = out.size(1);
  const int64_t B = hidden.size(0);
  const scalar_t* h = hidden.data_ptr<scalar_t>();
  scalar_t* o = out.data_ptr<scalar_t>();
  int64_t* f = fire.data_ptr<int64_t>();
  at::parallel_for(0, B * U, vec_grain(C), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(C);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t b = idx / U, i = idx % U;
      const RowPlan& p = plans[b];
      scalar_t* orow = o + idx * C;
      if (i >= p.n_out) {
        std::fill(orow, orow + C, scalar_t(0));
        f[idx] = -1;
        continue;
      }
      const int64_t L = len[b];
      const double* s = S + b * T;
      const int64_t te = lower_bound(s, L, output_end(p, i, beta));
      f[idx] = te < L ? te : std::max<int64_t>(L - 1, 0);
      std::fill(acc.begin(), acc.end(), acc_t(0));
      double lo, hi, sc = 1.0;
      if (output_interval(p, i, beta, &lo, &hi, &sc)) {
        const int64_t t1 = std::min(te, L - 1);
        for (int64_t t = upper_bound(s, L, lo); t <= t1; ++t) {
          const double w = overlap(t > 0 ? s[t - 1] : 0.0, s[t], lo, hi);
          if (w <= 0.0) continue;
          const acc_t wf = static_cast<acc_t>(w);
          const scalar_t* hr = h + (b * T + t) * C;
          acc_t* ac = acc.data();
          for (int64_t c = 0; c < C; ++c) ac[c] += wf * hr[c];
        }
      }
      const acc_t scf = static_cast<acc_t>(sc);
      for (int64_t c = 0; c < C; ++c) orow[c] = static_cast<scalar_t>(acc[c] * scf);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cif_forward_cpu(const at::Tensor& hidden, const at::Tensor& alphas,
                                                               const at::Tensor& lengths, double threshold,
                                                               const std::optional<at::Tensor>& target_lengths,
                                                               double tail_threshold) {
  check_inputs("w2p::cif_forward", hidden, alphas, lengths, threshold, target_lengths, tail_threshold,
               c10::DeviceType::CPU);
  const int64_t B = hidden.size(0), T = hidden.size(1), C = hidden.size(2);
  const int64_t* len = lengths.data_ptr<int64_t>();
  const int64_t* target = target_lengths.has_value() ? target_lengths->data_ptr<int64_t>() : nullptr;
  std::vector<double> S(static_cast<size_t>(B * T));
  std::vector<RowPlan> plans;
  AT_DISPATCH_FLOATING_TYPES(hidden.scalar_type(), "cif_forward_cpu_scan", [&] {
    plans = scan_rows<scalar_t>(alphas, len, target, threshold, tail_threshold, S.data());
  });
  int64_t U = 0;
  for (const auto& p : plans) U = std::max(U, p.n_out);
  at::Tensor out = at::empty({B, U, C}, hidden.options());
  at::Tensor fire = at::empty({B, U}, lengths.options());
  at::Tensor out_lengths = at::empty({B}, lengths.options());
  int64_t* ol = out_lengths.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) ol[b] = plans[b].n_out;
  AT_DISPATCH_FLOATING_TYPES(hidden.scalar_type(), "cif_forward_cpu", [&] {
    forward_kernel<scalar_t>(hidden, S.data(), plans, len, threshold, out, fire);
  });
  return {out, out_lengths, fire};
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& grad_out, const at::Tensor& hidden, const at::Tensor& out, const double* S,
                     const std::vector<RowPlan>& plans, const int64_t* len, double beta, at::Tensor& grad_hidden,
                     at::Tensor& grad_alphas) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t B = hidden.size(0), T = hidden.size(1), C = hidden.size(2), U = grad_out.size(1);
  const scalar_t* h = hidden.data_ptr<scalar_t>();
  const scalar_t* g = grad_out.data_ptr<scalar_t>();
  const scalar_t* o = out.data_ptr<scalar_t>();
  scalar_t* gh = grad_hidden.data_ptr<scalar_t>();
  std::vector<double> dS(static_cast<size_t>(B * T));
  // dL/dh_t = sum_i scale_i w_{i,t} g_i;  dL/dS_t = scale_k (<g_k, h_t> - <g_k, h_{t+1}>), k = open
  // output at S_t (S_t is the right end of frame t and the left end of frame t+1), plus the
  // derivative of the tail normaliser beta / r (r = S_L - m beta) at the last frame.
  at::parallel_for(0, B * T, vec_grain(C), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(C);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t b = idx / T, t = idx % T, L = len[b];
      scalar_t* ghr = gh + idx * C;
      if (t >= L) {
        std::fill(ghr, ghr + C, scalar_t(0));
        dS[idx] = 0.0;
        continue;
      }
      const RowPlan& p = plans[b];
      const int64_t n_out = std::min(p.n_out, U);
      const double* s = S + b * T;
      const double s0 = t > 0 ? s[t - 1] : 0.0, s1 = s[t];
      const int64_t k0 = open_index(p, s0, beta), k1 = open_index(p, s1, beta);
      std::fill(acc.begin(), acc.end(), acc_t(0));
      acc_t* ac = acc.data();
      for (int64_t i = k0; i <= k1 && i < n_out; ++i) {
        double lo, hi, sc;
        if (!output_interval(p, i, beta, &lo, &hi, &sc)) continue;
        const double w = overlap(s0, s1, lo, hi);
        if (w <= 0.0) continue;
        const acc_t coef = static_cast<acc_t>(w * sc);
        const scalar_t* gr = g + (b * U + i) * C;
        for (int64_t c = 0; c < C; ++c) ac[c] += coef * gr[c];
      }
      for (int64_t c = 0; c < C; ++c) ghr[c] = static_cast<scalar_t>(ac[c]);
      double d = 0.0;
      if (k1 < n_out) {
        const scalar_t* gk = g + (b * U + k1) * C;
        const scalar_t* ht = h + (b * T + t) * C;
        double dd = static_cast<double>(dot(gk, ht, C));
        if (t + 1 < L) dd -= static_cast<double>(dot(gk, ht + C, C));
        d = (k1 < p.m ? 1.0 : p.end_scale) * dd;
      }
      if (t == L - 1 && p.tail_r > 0.0 && p.m < n_out) {
        const scalar_t* gm = g + (b * U + p.m) * C;
        const scalar_t* om = o + (b * U + p.m) * C;
        d -= static_cast<double>(dot(gm, om, C)) / p.tail_r;
      }
      dS[idx] = d;
    }
  });
  scalar_t* ga = grad_alphas.data_ptr<scalar_t>();
  at::parallel_for(0, B, row_grain(T), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      double run = 0.0;  // dL/dalpha_s = sum_{t >= s} dL/dS_t
      for (int64_t t = T - 1; t >= 0; --t) {
        run += dS[b * T + t];
        ga[b * T + t] = t < len[b] ? static_cast<scalar_t>(run) : scalar_t(0);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> cif_backward_cpu(const at::Tensor& grad_out, const at::Tensor& hidden,
                                                    const at::Tensor& alphas, const at::Tensor& lengths,
                                                    const at::Tensor& out, double threshold,
                                                    const std::optional<at::Tensor>& target_lengths,
                                                    double tail_threshold) {
  check_inputs("w2p::cif_backward", hidden, alphas, lengths, threshold, target_lengths, tail_threshold,
               c10::DeviceType::CPU);
  check_backward_inputs("w2p::cif_backward", grad_out, hidden, out);
  const int64_t B = hidden.size(0), T = hidden.size(1);
  const int64_t* len = lengths.data_ptr<int64_t>();
  const int64_t* target = target_lengths.has_value() ? target_lengths->data_ptr<int64_t>() : nullptr;
  std::vector<double> S(static_cast<size_t>(B * T));
  at::Tensor grad_hidden = at::empty_like(hidden);
  at::Tensor grad_alphas = at::empty_like(alphas);
  AT_DISPATCH_FLOATING_TYPES(hidden.scalar_type(), "cif_backward_cpu", [&] {
    std::vector<RowPlan> plans = scan_rows<scalar_t>(alphas, len, target, threshold, tail_threshold, S.data());
    for (int64_t b = 0; b < B; ++b)
      TORCH_CHECK(plans[b].n_out <= grad_out.size(1), "w2p::cif_backward: grad_out has U = ", grad_out.size(1),
                  " but row ", b, " has ", plans[b].n_out, " outputs; pass the forward's inputs unchanged");
    backward_kernel<scalar_t>(grad_out, hidden, out, S.data(), plans, len, threshold, grad_hidden, grad_alphas);
  });
  return {grad_hidden, grad_alphas};
}

}  // namespace

TORCH_LIBRARY_IMPL(w2p, CPU, m) {
  m.impl("cif_forward", &cif_forward_cpu);
  m.impl("cif_backward", &cif_backward_cpu);
}

}  // namespace cif
}  // namespace w2p
