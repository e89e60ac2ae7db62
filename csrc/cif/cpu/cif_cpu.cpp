// CPU kernels of the CIF ops.  Both walk the firing plan frame by frame, tracking the open output
// incrementally: the forward accumulates straight into the output rows, the backward writes
// grad_hidden and the dot products for dL/dS in the same single pass over hidden, then a reverse
// prefix sum per row gives grad_alphas.  Work is split into (row, range of outputs / frames), so
// every task streams whole contiguous rows of C channels and B = 1 still uses every core.  All
// firing decisions come from an fp64 running sum (no drift at T = 5000).
#include <algorithm>
#include <memory>
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

// Calls f(b, lo, hi) for every row piece of the flattened range [begin, end) of a (B, n) index.
template <typename F>
inline void for_each_row_piece(int64_t begin, int64_t end, int64_t n, F&& f) {
  if (n <= 0) return;
  for (int64_t b = begin / n; b * n < end; ++b) f(b, std::max(begin - b * n, int64_t(0)), std::min(end - b * n, n));
}

// Dot products keep kLanes independent partial sums (lane j sums the elements c = j mod kLanes, a
// remainder is summed apart) so they vectorise without -ffast-math.  The lanes are held in
// 16-byte GCC/Clang vectors, the width every x86-64 and AArch64 CPU has, so they stay in
// registers (wider vector types are emulated in memory on such a baseline build).  The fused
// backward pass and dot() use the same lanes and the same final sum: bit-identical results.
constexpr int kLanes = 8;
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(16)));
  static constexpr int kWidth = 16 / sizeof(T);
  static constexpr int kCount = kLanes / kWidth;  // vectors per kLanes elements
};
template <typename T>
using vec_t = typename Vec<T>::type;

template <typename T>
inline vec_t<T> loadu(const T* p) {
  vec_t<T> v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void storeu(T* p, const vec_t<T>& v) {
  __builtin_memcpy(p, &v, sizeof(v));
}

// kLanes partial sums of a dot product, plus the scalar remainder
template <typename T>
struct DotAcc {
  vec_t<T> v[Vec<T>::kCount] = {};
  T rem = 0;
  inline void add(const T* a, const T* b) {  // kLanes elements
#pragma GCC unroll 8
    for (int i = 0; i < Vec<T>::kCount; ++i) v[i] += loadu(a + i * Vec<T>::kWidth) * loadu(b + i * Vec<T>::kWidth);
  }
  inline T sum() const {
    vec_t<T> x = v[0];
#pragma GCC unroll 8
    for (int i = 1; i < Vec<T>::kCount; ++i) x += v[i];
    T s = 0;
#pragma GCC unroll 8
    for (int j = 0; j < Vec<T>::kWidth; ++j) s += x[j];
    return s + rem;
  }
};

template <typename scalar_t>
inline scalar_t dot(const scalar_t* a, const scalar_t* b, int64_t n) {
  DotAcc<scalar_t> acc;
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) acc.add(a + c, b + c);
  for (; c < n; ++c) acc.rem += a[c] * b[c];
  return acc.sum();
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

// Open output at the end of a frame, advanced from the one open at its start: the same double
// comparisons (k+1)*beta <= S as count_fires, so it equals open_index(p, s1, beta) (S only grows).
inline int64_t advance_open(const RowPlan& p, int64_t k, double s1, double beta) {
  while (k < p.m && static_cast<double>(k + 1) * beta <= s1) ++k;
  return k;
}

// The outputs a frame (s0, s1] feeds, first ones first, as (index, weight * scale) with weight > 0;
// calls f(i, coef) for each; returns how many.
template <typename F>
inline int for_each_weight(const RowPlan& p, int64_t k0, int64_t k1, int64_t n_out, double s0, double s1,
                           double beta, bool scaled, F&& f) {
  int n = 0;
  for (int64_t i = k0; i <= k1 && i < n_out; ++i) {
    double lo, hi, sc;
    if (!output_interval(p, i, beta, &lo, &hi, &sc)) continue;
    const double w = overlap(s0, s1, lo, hi);
    if (w <= 0.0) continue;
    f(i, scaled ? w * sc : w);
    ++n;
  }
  return n;
}

// ---------------------------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------------------------
// Outputs [i0, i1) of one row: walk the frames from the first one that can feed output i0 until
// output i1 - 1 is complete.  Neighbouring pieces share at most a boundary frame (read twice).
template <typename scalar_t>
void forward_piece(const scalar_t* h, const double* s, const RowPlan& p, int64_t L, int64_t C, int64_t U, double beta,
                   int64_t i0, int64_t i1, scalar_t* o, int64_t* f) {
  const int64_t n_out = std::min(p.n_out, U);
  // outputs are first written in index order and only the last one written can still grow,
  // so each row is initialised by its first term (no zero fill, no accumulator copy)
  int64_t next = i0;  // first output row not written yet
  auto zero_until = [&](int64_t i) {
    for (; next < i; ++next) std::fill(o + next * C, o + (next + 1) * C, scalar_t(0));
  };
  const int64_t last = std::min({i1, n_out, p.m + 1});  // outputs past m get no weight
  // first frame whose S reaches output i0's start (open_index(S_t) >= i0)
  int64_t t = i0 < last ? (i0 == 0 ? 0 : lower_bound(s, L, static_cast<double>(i0) * beta)) : L;
  int64_t k = t > 0 ? open_index(p, s[t - 1], beta) : 0;  // open output at S_{t-1}
  for (; t < L && k < last; ++t) {
    const double s0 = t > 0 ? s[t - 1] : 0.0, s1 = s[t];
    const int64_t k1 = advance_open(p, k, s1, beta);
    const scalar_t* hr = h + t * C;
    for_each_weight(p, std::max(k, i0), std::min(k1, last - 1), n_out, s0, s1, beta, false, [&](int64_t i, double w) {
      const scalar_t wf = static_cast<scalar_t>(w);
      scalar_t* orow = o + i * C;
      if (i >= next) {
        zero_until(i);
        for (int64_t c = 0; c < C; ++c) orow[c] = wf * hr[c];
        next = i + 1;
      } else {
        for (int64_t c = 0; c < C; ++c) orow[c] += wf * hr[c];
      }
    });
    // a regular output i fires at the first frame with S_t >= (i+1) beta, where the open index passes it
    for (int64_t i = std::max(k, i0); i < std::min(k1, i1); ++i) f[i] = t;
    k = k1;
  }
  zero_until(i1);
  // the end output's scale (tail normaliser) applies to its finished sum
  if (p.m >= i0 && p.m < std::min(i1, n_out) && p.end_scale != 1.0) {
    const scalar_t sc = static_cast<scalar_t>(p.end_scale);
    scalar_t* orow = o + p.m * C;
    for (int64_t c = 0; c < C; ++c) orow[c] *= sc;
  }
  // the end output and the empty ones after it end at the last frame carrying weight
  const int64_t te = lower_bound(s, L, p.total);
  const int64_t t_end = te < L ? te : std::max<int64_t>(L - 1, 0);
  for (int64_t i = std::max({p.m, i0, int64_t(0)}); i < std::min(i1, n_out); ++i) f[i] = t_end;
  for (int64_t i = std::max(n_out, i0); i < i1; ++i) f[i] = -1;
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& hidden, const double* S, const std::vector<RowPlan>& plans, const int64_t* len,
                    double beta, at::Tensor& out, at::Tensor& fire) {
  const int64_t T = hidden.size(1), C = hidden.size(2), U = out.size(1);
  const scalar_t* h = hidden.data_ptr<scalar_t>();
  scalar_t* o = out.data_ptr<scalar_t>();
  int64_t* f = fire.data_ptr<int64_t>();
  at::parallel_for(0, hidden.size(0) * U, vec_grain(C), [&](int64_t begin, int64_t end) {
    for_each_row_piece(begin, end, U, [&](int64_t b, int64_t i0, int64_t i1) {
      forward_piece<scalar_t>(h + b * T * C, S + b * T, plans[b], len[b], C, U, beta, i0, i1, o + b * U * C,
                              f + b * U);
    });
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

// ---------------------------------------------------------------------------------------------
// backward
// ---------------------------------------------------------------------------------------------
// One pass over a frame's channels: gh = ca * ga + cb * gb (NW of the two terms) and the dot
// products d0 = <q0, h>, d1 = <q1, h>.  Every stream is read once; the grad_out rows stay in L1.
template <typename T, int NW, bool D0, bool D1>
inline void frame_pass(T* __restrict__ gh, const T* __restrict__ h, const T* __restrict__ ga, T ca,
                       const T* __restrict__ gb, T cb, const T* __restrict__ q0, const T* __restrict__ q1,
                       int64_t n, T* d0, T* d1) {
  constexpr int W = Vec<T>::kWidth;
  DotAcc<T> s0, s1;
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) {
#pragma GCC unroll 8
    for (int i = 0; i < kLanes; i += W) {
      if constexpr (NW == 0) storeu(gh + c + i, vec_t<T>{});
      if constexpr (NW == 1) storeu(gh + c + i, ca * loadu(ga + c + i));
      if constexpr (NW == 2) storeu(gh + c + i, ca * loadu(ga + c + i) + cb * loadu(gb + c + i));
    }
    if constexpr (D0) s0.add(q0 + c, h + c);
    if constexpr (D1) s1.add(q1 + c, h + c);
  }
  for (; c < n; ++c) {
    if constexpr (NW == 0) gh[c] = T(0);
    if constexpr (NW == 1) gh[c] = ca * ga[c];
    if constexpr (NW == 2) gh[c] = ca * ga[c] + cb * gb[c];
    if constexpr (D0) s0.rem += q0[c] * h[c];
    if constexpr (D1) s1.rem += q1[c] * h[c];
  }
  if constexpr (D0) *d0 = s0.sum();
  if constexpr (D1) *d1 = s1.sum();
}

template <typename T, int NW>
inline void frame_pass_d(T* gh, const T* h, const T* ga, T ca, const T* gb, T cb, const T* q0, const T* q1, int64_t n,
                         T* d0, T* d1) {
  if (q0 && q1) frame_pass<T, NW, true, true>(gh, h, ga, ca, gb, cb, q0, q1, n, d0, d1);
  else if (q0) frame_pass<T, NW, true, false>(gh, h, ga, ca, gb, cb, q0, q1, n, d0, d1);
  else if (q1) frame_pass<T, NW, false, true>(gh, h, ga, ca, gb, cb, q0, q1, n, d0, d1);
  else frame_pass<T, NW, false, false>(gh, h, ga, ca, gb, cb, q0, q1, n, d0, d1);
}

// Frames [t0, t1) of one row.  dL/dh_t = sum_i scale_i w_{i,t} g_i over the outputs frame t feeds,
// and dL/dS_t = scale_k (<g_k, h_t> - <g_k, h_{t+1}>) with k = k(t) the output open at S_t.  The
// outputs open at S_{t-1} and S_t are the first and last ones frame t feeds, so one pass over h_t
// gives grad_hidden and both dot products frame t owes: <g_{k(t)}, h_t> (first term of dS_t) and,
// when a boundary lies inside the frame, <g_{k(t-1)}, h_t> (second term of dS_{t-1}; otherwise it
// is the same product).
template <typename scalar_t>
void backward_piece(const scalar_t* g, const scalar_t* h, const scalar_t* o, scalar_t* gh, const double* s,
                    const RowPlan& p, int64_t L, int64_t C, int64_t U, double beta, int64_t t0, int64_t t1,
                    double* dS) {
  const int64_t n_out = std::min(p.n_out, U);
  for (int64_t t = std::max(t0, L); t < t1; ++t) std::fill(gh + t * C, gh + (t + 1) * C, scalar_t(0));  // padding
  t1 = std::min(t1, L);
  if (t0 >= t1) return;
  if (n_out <= 0) {  // nothing fires: no gradient
    std::fill(gh + t0 * C, gh + t1 * C, scalar_t(0));
    std::fill(dS + t0, dS + t1, 0.0);
    return;
  }
  auto scale = [&](int64_t k) { return k < p.m ? 1.0 : p.end_scale; };
  int64_t k = t0 > 0 ? open_index(p, s[t0 - 1], beta) : 0;  // open output at S_{t-1}
  scalar_t prev = 0;                                         // <g_{k(t-1)}, h_{t-1}>
  for (int64_t t = t0; t < t1; ++t) {
    const double s0 = t > 0 ? s[t - 1] : 0.0, s1 = s[t];
    const int64_t k1 = advance_open(p, k, s1, beta);
    // the first two terms go to the fused pass; a frame feeding more outputs (alpha > beta) is rare
    const scalar_t* row[2] = {nullptr, nullptr};
    scalar_t coef[2] = {0, 0};
    const int nw = for_each_weight(p, k, k1, n_out, s0, s1, beta, true, [&, j = 0](int64_t i, double c) mutable {
      if (j < 2) {
        row[j] = g + i * C;
        coef[j] = static_cast<scalar_t>(c);
      }
      ++j;
    });
    const scalar_t* q0 = (t > t0 && k1 != k && k < n_out) ? g + k * C : nullptr;
    const scalar_t* q1 = k1 < n_out ? g + k1 * C : nullptr;
    scalar_t d0 = 0, d1 = 0;
    scalar_t* ghr = gh + t * C;
    const scalar_t* hr = h + t * C;
    if (nw == 0) {
      frame_pass_d<scalar_t, 0>(ghr, hr, row[0], coef[0], row[1], coef[1], q0, q1, C, &d0, &d1);
    } else if (nw == 1) {
      frame_pass_d<scalar_t, 1>(ghr, hr, row[0], coef[0], row[1], coef[1], q0, q1, C, &d0, &d1);
    } else if (nw == 2) {
      frame_pass_d<scalar_t, 2>(ghr, hr, row[0], coef[0], row[1], coef[1], q0, q1, C, &d0, &d1);
    } else {
      bool first = true;
      for_each_weight(p, k, k1, n_out, s0, s1, beta, true, [&](int64_t i, double c) {
        const scalar_t cf = static_cast<scalar_t>(c);
        const scalar_t* gr = g + i * C;
        if (first) {
          for (int64_t x = 0; x < C; ++x) ghr[x] = cf * gr[x];
        } else {
          for (int64_t x = 0; x < C; ++x) ghr[x] += cf * gr[x];
        }
        first = false;
      });
      if (q0) d0 = dot(q0, hr, C);
      if (q1) d1 = dot(q1, hr, C);
    }
    if (t > t0)
      dS[t - 1] = k < n_out ? scale(k) * (static_cast<double>(prev) - static_cast<double>(k1 != k ? d0 : d1)) : 0.0;
    prev = d1;
    k = k1;
  }
  // the piece's last frame: its second term needs h_{t1} (read again by the next piece), computed
  // exactly as inside a piece so that dS does not depend on where the pieces (threads) split
  double d = 0.0;
  if (k < n_out) {
    const double next = t1 < L ? static_cast<double>(dot(g + k * C, h + t1 * C, C)) : 0.0;
    d = t1 < L ? scale(k) * (static_cast<double>(prev) - next) : scale(k) * static_cast<double>(prev);
  }
  if (t1 == L && p.tail_r > 0.0 && p.m < n_out)  // the tail normaliser beta / r, r = S_L - m beta
    d -= static_cast<double>(dot(g + p.m * C, o + p.m * C, C)) / p.tail_r;
  dS[t1 - 1] = d;
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& grad_out, const at::Tensor& hidden, const at::Tensor& out, const double* S,
                     const std::vector<RowPlan>& plans, const int64_t* len, double beta, at::Tensor& grad_hidden,
                     at::Tensor& grad_alphas) {
  const int64_t B = hidden.size(0), T = hidden.size(1), C = hidden.size(2), U = grad_out.size(1);
  const scalar_t* h = hidden.data_ptr<scalar_t>();
  const scalar_t* g = grad_out.data_ptr<scalar_t>();
  const scalar_t* o = out.data_ptr<scalar_t>();
  scalar_t* gh = grad_hidden.data_ptr<scalar_t>();
  // dL/dS (B, T); only frames t < L are written and read
  std::unique_ptr<double[]> dS(new double[static_cast<size_t>(B * T)]);
  at::parallel_for(0, B * T, vec_grain(C), [&](int64_t begin, int64_t end) {
    for_each_row_piece(begin, end, T, [&](int64_t b, int64_t t0, int64_t t1) {
      backward_piece<scalar_t>(g + b * U * C, h + b * T * C, o + b * U * C, gh + b * T * C, S + b * T, plans[b],
                               len[b], C, U, beta, t0, t1, dS.get() + b * T);
    });
  });
  scalar_t* ga = grad_alphas.data_ptr<scalar_t>();
  at::parallel_for(0, B, row_grain(T), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const double* d = dS.get() + b * T;
      double run = 0.0;  // dL/dalpha_s = sum_{t >= s} dL/dS_t
      for (int64_t t = T - 1; t >= 0; --t) {
        if (t >= len[b]) {
          ga[b * T + t] = scalar_t(0);
          continue;
        }
        run += d[t];
        ga[b * T + t] = static_cast<scalar_t>(run);
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
