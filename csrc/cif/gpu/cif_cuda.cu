// CUDA kernels of the CIF ops (semantics: w2p/cif.py; per-row plan: ../cif_common.h).
//
//   scan      one block per row: fp64 running sum S (chunked block scan), value checks, row plan
//   forward   one block per (output, row), threads over channels (coalesced); each block walks only
//             the frames overlapping its output (binary search in S), accumulates in fp32/fp64
//   backward  one block per (frame, row): grad_hidden over channels + block-reduced dot products
//             for dL/dS_t; then one block per row for the reverse prefix sum -> grad_alphas
// No dense (B, U, T) matrix, no per-time-step launches, all launches on the current stream.
// The forward reads the row plans back to size the output (one small device->host copy).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../cif_common.h"

namespace w2p {
namespace cif {
namespace {

constexpr int kScanThreads = 256;
constexpr int kThreads = 128;
constexpr int kPlanCols = 6;  // total, m, n_out, end_scale, tail_r, flags
enum : int { kBadAlpha = 1, kBadLength = 2, kBadTarget = 4 };

__device__ __forceinline__ RowPlan load_plan(const double* p, int64_t U) {
  RowPlan r;
  r.total = p[0];
  r.m = static_cast<int64_t>(p[1]);
  r.n_out = static_cast<int64_t>(p[2]);
  if (r.n_out > U) r.n_out = U;
  r.end_scale = p[3];
  r.tail_r = p[4];
  return r;
}

__device__ __forceinline__ int64_t clamp_length(int64_t L, int64_t T) { return L < 0 ? 0 : (L > T ? T : L); }

// Block-wide sum (all threads get the result); blockDim.x must be a multiple of 32, <= 1024.
__device__ double block_sum(double v) {
  __shared__ double warp_sums[32];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // warp_sums may still be read by a previous call
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  double s = 0.0;
  const int n_warps = (blockDim.x + 31) >> 5;
  for (int w = 0; w < n_warps; ++w) s += warp_sums[w];
  return s;
}

template <typename alpha_t>
__global__ void scan_kernel(const alpha_t* __restrict__ alphas, const int64_t* __restrict__ lengths,
                            const int64_t* __restrict__ targets, int64_t T, double beta, double tail_threshold,
                            double* __restrict__ S, double* __restrict__ plan) {
  __shared__ double part[kScanThreads];
  __shared__ int flags;
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  const int64_t L_raw = lengths[b];
  const int64_t L = clamp_length(L_raw, T);
  if (tid == 0) flags = (L_raw < 0 || L_raw > T) ? kBadLength : 0;
  __syncthreads();
  const int64_t chunk = (T + kScanThreads - 1) / kScanThreads;
  const int64_t begin = tid * chunk;
  const int64_t end = begin + chunk < T ? begin + chunk : T;
  const alpha_t* a = alphas + b * T;
  double local = 0.0;
  int bad = 0;
  for (int64_t t = begin; t < end && t < L; ++t) {
    const double v = static_cast<double>(a[t]);
    if (!(v >= 0.0) || isinf(v)) bad = kBadAlpha;
    local += v;
  }
  if (bad) atomicOr(&flags, bad);
  part[tid] = local;
  __syncthreads();
  if (tid == 0) {  // exclusive scan of 256 chunk sums; cheap next to the chunk walks
    double run = 0.0;
    for (int i = 0; i < kScanThreads; ++i) {
      const double x = part[i];
      part[i] = run;
      run += x;
    }
    int64_t target = -1;
    if (targets != nullptr) {
      target = targets[b];
      if (target < 0) {
        flags |= kBadTarget;
        target = 0;
      }
    }
    const RowPlan p = make_plan(run, beta, target, tail_threshold);
    double* pr = plan + b * kPlanCols;
    pr[0] = p.total;
    pr[1] = static_cast<double>(p.m);
    pr[2] = static_cast<double>(p.n_out);
    pr[3] = p.end_scale;
    pr[4] = p.tail_r;
  }
  __syncthreads();
  double run = part[tid];
  double* s = S + b * T;
  for (int64_t t = begin; t < end; ++t) {
    if (t < L) run += static_cast<double>(a[t]);
    s[t] = run;  // padding frames repeat the total
  }
  if (tid == 0) plan[b * kPlanCols + 5] = static_cast<double>(flags);
}

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ hidden, const double* __restrict__ S,
                               const double* __restrict__ plan, const int64_t* __restrict__ lengths, int64_t T,
                               int64_t C, int64_t U, double beta, scalar_t* __restrict__ out,
                               int64_t* __restrict__ fire) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t i = blockIdx.x, b = blockIdx.y;
  const RowPlan p = load_plan(plan + b * kPlanCols, U);
  scalar_t* o = out + (b * U + i) * C;
  if (i >= p.n_out) {
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) o[c] = scalar_t(0);
    if (threadIdx.x == 0) fire[b * U + i] = -1;
    return;
  }
  const int64_t L = clamp_length(lengths[b], T);
  const double* s = S + b * T;
  const int64_t te = lower_bound(s, L, output_end(p, i, beta));
  if (threadIdx.x == 0) fire[b * U + i] = te < L ? te : (L > 0 ? L - 1 : 0);
  double lo = 0.0, hi = 0.0, sc = 1.0;
  const bool has = output_interval(p, i, beta, &lo, &hi, &sc);
  const int64_t t0 = has ? upper_bound(s, L, lo) : 0;
  const int64_t t1 = has ? (te < L - 1 ? te : L - 1) : -1;
  const acc_t scf = static_cast<acc_t>(sc);
  const scalar_t* h = hidden + b * T * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    acc_t acc = acc_t(0);
    for (int64_t t = t0; t <= t1; ++t) {
      const double w = overlap(t > 0 ? s[t - 1] : 0.0, s[t], lo, hi);
      if (w > 0.0) acc += static_cast<acc_t>(w) * static_cast<acc_t>(h[t * C + c]);
    }
    o[c] = static_cast<scalar_t>(acc * scf);
  }
}

template <typename scalar_t>
__global__ void backward_frame_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ hidden,
                                      const scalar_t* __restrict__ out, const double* __restrict__ S,
                                      const double* __restrict__ plan, const int64_t* __restrict__ lengths, int64_t T,
                                      int64_t C, int64_t U, double beta, scalar_t* __restrict__ grad_hidden,
                                      double* __restrict__ dS) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t t = blockIdx.x, b = blockIdx.y;
  const int64_t L = clamp_length(lengths[b], T);
  scalar_t* gh = grad_hidden + (b * T + t) * C;
  if (t >= L) {  // uniform per block: no thread reaches block_sum below
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) gh[c] = scalar_t(0);
    if (threadIdx.x == 0) dS[b * T + t] = 0.0;
    return;
  }
  const RowPlan p = load_plan(plan + b * kPlanCols, U);
  const double* s = S + b * T;
  const double s0 = t > 0 ? s[t - 1] : 0.0, s1 = s[t];
  const int64_t k0 = open_index(p, s0, beta), k1 = open_index(p, s1, beta);
  const scalar_t* g = grad_out + b * U * C;
  const scalar_t* h0 = hidden + (b * T + t) * C;
  const bool has_k = k1 < p.n_out, has_next = t + 1 < L;
  const bool tail = t == L - 1 && p.tail_r > 0.0 && p.m < p.n_out;
  const scalar_t* gk = g + (has_k ? k1 : 0) * C;
  const scalar_t* gm = g + (tail ? p.m : 0) * C;
  const scalar_t* om = out + (b * U + (tail ? p.m : 0)) * C;
  acc_t d_cur = 0, d_next = 0, d_tail = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    acc_t acc = acc_t(0);
    for (int64_t i = k0; i <= k1 && i < p.n_out; ++i) {
      double lo, hi, sc;
      if (!output_interval(p, i, beta, &lo, &hi, &sc)) continue;
      const double w = overlap(s0, s1, lo, hi);
      if (w > 0.0) acc += static_cast<acc_t>(w * sc) * static_cast<acc_t>(g[i * C + c]);
    }
    gh[c] = static_cast<scalar_t>(acc);
    if (has_k) {
      const acc_t gv = static_cast<acc_t>(gk[c]);
      d_cur += gv * static_cast<acc_t>(h0[c]);
      if (has_next) d_next += gv * static_cast<acc_t>(h0[C + c]);
    }
    if (tail) d_tail += static_cast<acc_t>(gm[c]) * static_cast<acc_t>(om[c]);
  }
  const double cur = block_sum(static_cast<double>(d_cur));
  const double next = block_sum(static_cast<double>(d_next));
  const double tl = block_sum(static_cast<double>(d_tail));
  if (threadIdx.x == 0) {
    double d = has_k ? (k1 < p.m ? 1.0 : p.end_scale) * (cur - next) : 0.0;
    if (tail) d -= tl / p.tail_r;
    dS[b * T + t] = d;
  }
}

// grad_alphas[b, s] = sum_{t >= s} dS[b, t] for s < L (0 on padding); chunked reverse block scan.
__global__ void reverse_scan_kernel(const double* __restrict__ dS, const int64_t* __restrict__ lengths, int64_t T,
                                    double* __restrict__ grad_alphas) {
  __shared__ double part[kScanThreads];
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  const int64_t L = clamp_length(lengths[b], T);
  const int64_t chunk = (T + kScanThreads - 1) / kScanThreads;
  const int64_t begin = tid * chunk;
  const int64_t end = begin + chunk < T ? begin + chunk : T;
  const double* d = dS + b * T;
  double local = 0.0;
  for (int64_t t = begin; t < end && t < L; ++t) local += d[t];
  part[tid] = local;
  __syncthreads();
  if (tid == 0) {  // exclusive suffix sums of the chunk sums
    double run = 0.0;
    for (int i = kScanThreads - 1; i >= 0; --i) {
      const double x = part[i];
      part[i] = run;
      run += x;
    }
  }
  __syncthreads();
  double run = part[tid];
  double* ga = grad_alphas + b * T;
  for (int64_t t = end - 1; t >= begin; --t) {
    if (t < L) {
      run += d[t];
      ga[t] = run;
    } else {
      ga[t] = 0.0;
    }
  }
}

// Runs the scan; returns (S (B, T) fp64, plan (B, kPlanCols) fp64), both on the device.
std::tuple<at::Tensor, at::Tensor> scan_rows(const at::Tensor& alphas_in, const at::Tensor& lengths,
                                             const std::optional<at::Tensor>& target_lengths, double beta,
                                             double tail_threshold, cudaStream_t stream) {
  const int64_t B = alphas_in.size(0), T = alphas_in.size(1);
  // half / bfloat16 alphas are widened once (B x T, cheap) so the scan reads float or double
  at::Tensor alphas = (alphas_in.scalar_type() == at::kDouble) ? alphas_in : alphas_in.to(at::kFloat);
  auto dopt = alphas.options().dtype(at::kDouble);
  at::Tensor S = at::empty({B, T}, dopt);
  at::Tensor plan = at::empty({B, kPlanCols}, dopt);
  const int64_t* targets = target_lengths.has_value() ? target_lengths->data_ptr<int64_t>() : nullptr;
  if (B > 0) {
    AT_DISPATCH_FLOATING_TYPES(alphas.scalar_type(), "cif_cuda_scan", [&] {
      scan_kernel<scalar_t><<<static_cast<unsigned>(B), kScanThreads, 0, stream>>>(
          alphas.data_ptr<scalar_t>(), lengths.data_ptr<int64_t>(), targets, T, beta, tail_threshold,
          S.data_ptr<double>(), plan.data_ptr<double>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {S, plan};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cif_forward_cuda(const at::Tensor& hidden, const at::Tensor& alphas,
                                                                const at::Tensor& lengths, double threshold,
                                                                const std::optional<at::Tensor>& target_lengths,
                                                                double tail_threshold) {
  check_inputs("w2p::cif_forward", hidden, alphas, lengths, threshold, target_lengths, tail_threshold,
               c10::DeviceType::CUDA);
  const int64_t B = hidden.size(0), T = hidden.size(1), C = hidden.size(2);
  TORCH_CHECK(B <= 65535, "w2p::cif_forward: batch size ", B, " exceeds the CUDA grid limit 65535; split the batch");
  const c10::cuda::CUDAGuard guard(hidden.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto scanned = scan_rows(alphas, lengths, target_lengths, threshold, tail_threshold, stream);
  const at::Tensor& S = std::get<0>(scanned);
  const at::Tensor& plan = std::get<1>(scanned);
  // The one synchronisation: the output size depends on the data (and so do the value checks).
  const at::Tensor plan_h = plan.to(at::kCPU);
  const double* ph = plan_h.data_ptr<double>();
  int64_t U = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int flags = static_cast<int>(ph[b * kPlanCols + 5]);
    TORCH_CHECK(!(flags & kBadLength), "cif: lengths[", b, "] is outside [0, T = ", T,
                "]; lengths must count the valid frames of each row");
    TORCH_CHECK(!(flags & kBadTarget), "cif: target_lengths[", b, "] is negative");
    TORCH_CHECK(!(flags & kBadAlpha), "cif: alphas must be finite and >= 0, row ", b,
                " has a negative or non-finite value");
    U = std::max<int64_t>(U, static_cast<int64_t>(ph[b * kPlanCols + 2]));
  }
  at::Tensor out = at::empty({B, U, C}, hidden.options());
  at::Tensor fire = at::empty({B, U}, lengths.options());
  if (B > 0 && U > 0) {
    const dim3 grid(static_cast<unsigned>(U), static_cast<unsigned>(B));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hidden.scalar_type(), "cif_cuda_forward", [&] {
      forward_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
          hidden.data_ptr<scalar_t>(), S.data_ptr<double>(), plan.data_ptr<double>(), lengths.data_ptr<int64_t>(), T,
          C, U, threshold, out.data_ptr<scalar_t>(), fire.data_ptr<int64_t>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  at::Tensor out_lengths = plan.select(1, 2).to(at::kLong);
  return {out, out_lengths, fire};
}

std::tuple<at::Tensor, at::Tensor> cif_backward_cuda(const at::Tensor& grad_out, const at::Tensor& hidden,
                                                     const at::Tensor& alphas, const at::Tensor& lengths,
                                                     const at::Tensor& out, double threshold,
                                                     const std::optional<at::Tensor>& target_lengths,
                                                     double tail_threshold) {
  check_inputs("w2p::cif_backward", hidden, alphas, lengths, threshold, target_lengths, tail_threshold,
               c10::DeviceType::CUDA);
  check_backward_inputs("w2p::cif_backward", grad_out, hidden, out);
  const int64_t B = hidden.size(0), T = hidden.size(1), C = hidden.size(2), U = grad_out.size(1);
  TORCH_CHECK(B <= 65535, "w2p::cif_backward: batch size ", B, " exceeds the CUDA grid limit 65535");
  const c10::cuda::CUDAGuard guard(hidden.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // the forward validated the values; recomputing the plan needs no host synchronisation
  const auto scanned = scan_rows(alphas, lengths, target_lengths, threshold, tail_threshold, stream);
  const at::Tensor& S = std::get<0>(scanned);
  const at::Tensor& plan = std::get<1>(scanned);
  at::Tensor grad_hidden = at::empty_like(hidden);
  at::Tensor dS = at::empty({B, T}, S.options());
  at::Tensor grad_alphas = at::empty({B, T}, S.options());
  if (B > 0 && T > 0) {
    const dim3 grid(static_cast<unsigned>(T), static_cast<unsigned>(B));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hidden.scalar_type(), "cif_cuda_backward", [&] {
      backward_frame_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
          grad_out.data_ptr<scalar_t>(), hidden.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
          S.data_ptr<double>(), plan.data_ptr<double>(), lengths.data_ptr<int64_t>(), T, C, U, threshold,
          grad_hidden.data_ptr<scalar_t>(), dS.data_ptr<double>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    reverse_scan_kernel<<<static_cast<unsigned>(B), kScanThreads, 0, stream>>>(
        dS.data_ptr<double>(), lengths.data_ptr<int64_t>(), T, grad_alphas.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    grad_hidden.zero_();
    grad_alphas.zero_();
  }
  return {grad_hidden, grad_alphas.to(alphas.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(w2p, CUDA, m) {
  m.impl("cif_forward", &cif_forward_cuda);
  m.impl("cif_backward", &cif_backward_cuda);
}

}  // namespace cif
}  // namespace w2p
