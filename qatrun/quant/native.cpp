// qatrun's CPU training kernels for the quantizers: SAT activations, LSQ, SAT weights.
//
// The formulas are defined in Python, by the functions of the same names in qatrun/quant/sat.py and lsq.py
// (qatrun.quant.kernels runs this file's function in place of the definition). Each function here is one
// pass over its tensor (the SAT weight forward: two, around the max) and restates the definition's
// arithmetic operation for operation, in the tensor's dtype: the same divisions, the same products by float
// constants, the same rounding rules (half away from zero for activations and LSQ, half to even for SAT
// weights), tanh and cosh from ATen itself. So the values equal the definitions' to the bit; only the sums
// (the alpha or step gradient, accumulated in double per thread here) run in another order. Built with
// -ffp-contract=off: no fused multiply-add may change a rounding. tests/quant/test_quant_kernels.py holds
// the two to the same bits.
//
// The element-wise loops use ATen's Vectorized<T> (AVX2 or AVX-512, as torch's own kernels: the build
// defines the CPU_CAPABILITY torch reports) and finish the tail with scalars doing the same operations.
//
// Why: a QAT step calls each quantizer once forward and once backward per layer. As eager PyTorch
// operations that is a dozen kernels and temporaries each; as a compiled graph, one call that costs tens of
// microseconds of guards and wrappers. Here it is one C++ call.

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>

namespace {

constexpr int64_t kGrain = 16384;

template <typename T>
using Vec = at::vec::Vectorized<T>;

// C's round (half away from zero), exactly: floor(|v|), up when the exact remainder is >= 1/2.
template <typename T>
inline T round_half_away(T v) {
  const T magnitude = std::fabs(v);
  const T whole = std::floor(magnitude);
  return std::copysign(whole + static_cast<T>(magnitude - whole >= static_cast<T>(0.5)), v);
}

template <typename T>
inline Vec<T> round_half_away(const Vec<T>& v) {
  const Vec<T> magnitude = v.abs();
  const Vec<T> whole = magnitude.floor();
  const Vec<T> up = (magnitude - whole >= Vec<T>(T(0.5))) & Vec<T>(T(1));
  return (whole + up) | (v & Vec<T>(T(-0.0)));  // whole + up >= 0: give it v's sign bit
}

template <typename T>
inline Vec<T> clip(const Vec<T>& v, const Vec<T>& lo, const Vec<T>& hi) {
  return at::vec::minimum(at::vec::maximum(v, lo), hi);
}

template <typename T>
inline T clip(T v, T lo, T hi) {
  return std::min(std::max(v, lo), hi);
}

template <typename T>
T scalar_of(const torch::Tensor& t) {
  return static_cast<T>(t.item<double>());
}

// vec_body(i) on whole vectors from begin, then scalar_body(i) on the tail.
template <typename T, typename VecBody, typename ScalarBody>
inline void vector_loop(int64_t begin, int64_t end, const VecBody& vec_body, const ScalarBody& scalar_body) {
  constexpr int64_t width = Vec<T>::size();
  int64_t i = begin;
  for (; i + width <= end; i += width) vec_body(i);
  for (; i < end; ++i) scalar_body(i);
}

// Sum over [0, n) of the values the bodies return (a vector of them, or one scalar), in double per chunk.
template <typename T, typename VecTerm, typename ScalarTerm>
double vector_sum(int64_t n, const VecTerm& vec_term, const ScalarTerm& scalar_term) {
  return at::parallel_reduce(
      0, n, kGrain, 0.0,
      [&](int64_t begin, int64_t end, double partial) {
        Vec<T> lanes(T(0));
        T tail = 0;
        vector_loop<T>(
            begin, end, [&](int64_t i) { lanes = lanes + vec_term(i); }, [&](int64_t i) { tail += scalar_term(i); });
        T stored[Vec<T>::size()];
        lanes.store(stored);
        for (T value : stored) partial += value;
        return partial + tail;
      },
      [](double a, double b) { return a + b; });
}

void check_cpu(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), what, ": qatrun's native kernels run on the CPU");
}

// ------------------------------------------------------------------------------------------------------
// SAT activations: a = |alpha|, q = min(max(x, 0), a) / a, level = round(R q), y = level / R * a.

torch::Tensor sat_act_forward(torch::Tensor x, torch::Tensor alpha, int64_t steps) {
  check_cpu(x, "sat_act_forward");
  x = x.contiguous();
  auto y = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sat_act_forward", [&] {
    using T = scalar_t;
    const T a = std::fabs(scalar_of<T>(alpha)), r = static_cast<T>(steps);
    const Vec<T> av(a), rv(r), zero(T(0));
    const T* in = x.data_ptr<T>();
    T* out = y.data_ptr<T>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      vector_loop<T>(
          begin, end,
          [&](int64_t i) {
            const Vec<T> q = clip(Vec<T>::loadu(in + i), zero, av) / av;
            (round_half_away(rv * q) / rv * av).store(out + i);
          },
          [&](int64_t i) {
            const T q = clip(in[i], T(0), a) / a;
            out[i] = round_half_away(r * q) / r * a;
          });
    });
  });
  return y;
}

// dx = g 1[0 < x <= a]; dalpha = sum g (1 if x >= a else level / R - q).
std::tuple<torch::Tensor, torch::Tensor> sat_act_backward(torch::Tensor x, torch::Tensor alpha, torch::Tensor grad,
                                                          int64_t steps) {
  check_cpu(x, "sat_act_backward");
  x = x.contiguous();
  grad = grad.contiguous();
  auto grad_x = torch::empty_like(x);
  double total = 0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sat_act_backward", [&] {
    using T = scalar_t;
    const T a = std::fabs(scalar_of<T>(alpha)), r = static_cast<T>(steps);
    const Vec<T> av(a), rv(r), zero(T(0)), one(T(1));
    const T* in = x.data_ptr<T>();
    const T* g = grad.data_ptr<T>();
    T* gx = grad_x.data_ptr<T>();
    total = vector_sum<T>(
        x.numel(),
        [&](int64_t i) {
          const Vec<T> v = Vec<T>::loadu(in + i), gv = Vec<T>::loadu(g + i);
          (gv & ((v > zero) & (v <= av))).store(gx + i);
          const Vec<T> q = clip(v, zero, av) / av;
          return gv * Vec<T>::blendv(round_half_away(rv * q) / rv - q, one, v >= av);
        },
        [&](int64_t i) {
          const T v = in[i];
          gx[i] = (v > 0 && v <= a) ? g[i] : T(0);
          const T q = clip(v, T(0), a) / a;
          return g[i] * (v >= a ? T(1) : round_half_away(r * q) / r - q);
        });
  });
  return {grad_x, torch::tensor(total, alpha.options()).reshape(alpha.sizes())};
}

// ------------------------------------------------------------------------------------------------------
// LSQ: v = x / s, level = round(clamp(v, Qn, Qp)), y = s level.

torch::Tensor lsq_forward(torch::Tensor x, torch::Tensor step, int64_t qn, int64_t qp) {
  check_cpu(x, "lsq_forward");
  x = x.contiguous();
  auto y = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lsq_forward", [&] {
    using T = scalar_t;
    const T s = scalar_of<T>(step), lo = static_cast<T>(qn), hi = static_cast<T>(qp);
    const Vec<T> sv(s), lov(lo), hiv(hi);
    const T* in = x.data_ptr<T>();
    T* out = y.data_ptr<T>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      vector_loop<T>(
          begin, end,
          [&](int64_t i) { (sv * round_half_away(clip(Vec<T>::loadu(in + i) / sv, lov, hiv))).store(out + i); },
          [&](int64_t i) { out[i] = s * round_half_away(clip(in[i] / s, lo, hi)); });
    });
  });
  return y;
}

// dx = g 1[Qn < v < Qp]; the step gradient sum g (Qn if v <= Qn, Qp if v >= Qp, else level - v), unscaled.
std::tuple<torch::Tensor, torch::Tensor> lsq_backward(torch::Tensor x, torch::Tensor step, torch::Tensor grad,
                                                      int64_t qn, int64_t qp) {
  check_cpu(x, "lsq_backward");
  x = x.contiguous();
  grad = grad.contiguous();
  auto grad_x = torch::empty_like(x);
  double total = 0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lsq_backward", [&] {
    using T = scalar_t;
    const T s = scalar_of<T>(step), lo = static_cast<T>(qn), hi = static_cast<T>(qp);
    const Vec<T> sv(s), lov(lo), hiv(hi);
    const T* in = x.data_ptr<T>();
    const T* g = grad.data_ptr<T>();
    T* gx = grad_x.data_ptr<T>();
    total = vector_sum<T>(
        x.numel(),
        [&](int64_t i) {
          const Vec<T> v = Vec<T>::loadu(in + i) / sv, gv = Vec<T>::loadu(g + i);
          (gv & ((v > lov) & (v < hiv))).store(gx + i);
          const Vec<T> inside = round_half_away(clip(v, lov, hiv)) - v;
          return gv * Vec<T>::blendv(Vec<T>::blendv(inside, hiv, v >= hiv), lov, v <= lov);
        },
        [&](int64_t i) {
          const T v = in[i] / s;
          gx[i] = (v > lo && v < hi) ? g[i] : T(0);
          return g[i] * (v <= lo ? lo : (v >= hi ? hi : round_half_away(v) - v));
        });
  });
  return {grad_x, torch::tensor(total, step.options())};
}

// ------------------------------------------------------------------------------------------------------
// SAT weights (per tensor), N2D2's kernels as qatrun/quant/sat.py defines them:
//   t = tanh(W) / M, M = max|tanh W| (1 if 0); the levels of the QuantMode (rint: half to even);
//   S = sqrt(n_out Var(Wq)) from sequential sums in the dtype (n_out = 0: S = 1);
//   out = Wq / S, or the integer numerators n; factor = 1 / (M S), or D / M for integer levels.

enum Mode { kDefault = 0, kSymmetric = 1, kAsymmetric = 2, kFullRange = 3 };

template <typename T>
T sat_scale(const T* wq, int64_t count, int64_t n_out) {
  if (count < 2) return T(1);
  T sum = 0;
  for (int64_t i = 0; i < count; ++i) sum += wq[i];
  const T mean = sum / static_cast<T>(count);
  T squares = 0;
  for (int64_t i = 0; i < count; ++i) {
    const T centred = wq[i] - mean;
    squares += centred * centred;
  }
  const T s = std::sqrt(static_cast<T>(n_out) * (squares / static_cast<T>(count - 1)));
  return s > 0 ? s : T(1);
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> sat_weight_forward(
    torch::Tensor w, int64_t steps, const std::string& mode_name, bool quantize, int64_t n_out, bool integer) {
  check_cpu(w, "sat_weight_forward");
  const Mode mode = mode_name == "Symmetric"    ? kSymmetric
                    : mode_name == "Asymmetric" ? kAsymmetric
                    : mode_name == "FullRange"  ? kFullRange
                                                : kDefault;
  TORCH_CHECK(mode != kDefault || mode_name == "Default", "unknown SAT QuantMode ", mode_name);
  auto t = at::tanh(w.contiguous());  // ATen's tanh: the eager quantizer's values
  auto out = integer ? torch::empty_like(t) : t;
  torch::Tensor factor, scale;
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "sat_weight_forward", [&] {
    using T = scalar_t;
    T* v = t.data_ptr<T>();
    T* n = out.data_ptr<T>();
    const int64_t count = t.numel();
    Vec<T> lanes(T(0));
    T m = 0;
    vector_loop<T>(
        0, count, [&](int64_t i) { lanes = at::vec::maximum(lanes, Vec<T>::loadu(v + i).abs()); },
        [&](int64_t i) { m = std::max(m, std::fabs(v[i])); });
    T stored[Vec<T>::size()];
    lanes.store(stored);
    for (T value : stored) m = std::max(m, value);
    if (!(m > 0)) m = T(1);
    const int64_t half = steps / 2;
    const T r = static_cast<T>(steps), h = static_cast<T>(half);
    int64_t denominator = (mode == kSymmetric || mode == kAsymmetric) ? half : steps;
    // Python's float constants, rounded to the dtype as torch rounds a scalar operand.
    const T inv_r = static_cast<T>(1.0 / steps), inv_h = static_cast<T>(half ? 1.0 / half : 0.0);
    const T asym_a = static_cast<T>(1 + 1.0 / (2 * half)), asym_b = static_cast<T>(1.0 / (2 * half));
    const T full_a = static_cast<T>(1 + 0.9998 / steps), full_b = static_cast<T>(0.4999 / steps);
    // v becomes Wq (the scale is taken from it), n the integer numerators where asked for. The common case
    // (Default, float levels) runs on vectors first; the loop below finishes whatever they left.
    int64_t first = 0;
    if (mode == kDefault && quantize && !integer) {
      const Vec<T> mv(m), rv(r), inv_rv(inv_r), one(T(1)), half_v(T(0.5)), two(T(2));
      for (; first + Vec<T>::size() <= count; first += Vec<T>::size()) {
        const Vec<T> k = ((Vec<T>::loadu(v + first) / mv + one) * half_v * rv).round();  // round: half to even
        (two * (k * inv_rv) - one).store(v + first);
      }
    }
    for (int64_t i = first; i < count; ++i) {
      const T u = v[i] / m;
      if (mode == kAsymmetric) {
        const T a = asym_a * u - asym_b;
        if (!quantize) {
          v[i] = a;
          continue;
        }
        const T k = std::nearbyint(h * a);
        if (integer) n[i] = k;
        v[i] = k * inv_h;
      } else if (!quantize) {
        v[i] = u;
      } else if (mode == kSymmetric) {
        const T k = std::nearbyint(h * u);
        if (integer) n[i] = k;
        v[i] = k * inv_h;
      } else {
        T p = T(0.5) * (u + T(1));
        if (mode == kFullRange) p = full_a * p - full_b;
        const T k = std::nearbyint(r * p);
        if (integer) n[i] = T(2) * k - r;
        v[i] = T(2) * (k * inv_r) - T(1);
      }
    }
    const T s = n_out > 0 ? sat_scale(v, count, n_out) : T(1);
    if (integer) {
      factor = torch::tensor(static_cast<T>(denominator) / m, t.options());
    } else {
      if (n_out > 0) {
        for (int64_t i = 0; i < count; ++i) v[i] /= s;
      }
      factor = torch::tensor(T(1) / (m * s), t.options());
    }
    scale = torch::tensor(s, t.options());
  });
  return {out, factor, scale};
}

// dW = g (1/cosh W)^2 factor c (c = 1 skipped).
torch::Tensor sat_weight_backward(torch::Tensor w, torch::Tensor grad, torch::Tensor factor, double c) {
  check_cpu(w, "sat_weight_backward");
  auto result = at::cosh(w.contiguous());  // ATen's cosh: the eager quantizer's values
  grad = grad.contiguous();
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "sat_weight_backward", [&] {
    using T = scalar_t;
    T* v = result.data_ptr<T>();
    const T* g = grad.data_ptr<T>();
    const T f = scalar_of<T>(factor), cc = static_cast<T>(c);
    const Vec<T> fv(f), ccv(cc), one(T(1));
    at::parallel_for(0, result.numel(), kGrain, [&](int64_t begin, int64_t end) {
      vector_loop<T>(
          begin, end,
          [&](int64_t i) {
            const Vec<T> inv = one / Vec<T>::loadu(v + i);
            Vec<T> d = inv * inv * Vec<T>::loadu(g + i) * fv;
            if (c != 1.0) d = d * ccv;
            d.store(v + i);
          },
          [&](int64_t i) {
            const T inv = T(1) / v[i];
            T d = inv * inv * g[i] * f;
            if (c != 1.0) d = d * cc;
            v[i] = d;
          });
    });
  });
  return result;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("sat_act_forward", &sat_act_forward);
  module.def("sat_act_backward", &sat_act_backward);
  module.def("lsq_forward", &lsq_forward);
  module.def("lsq_backward", &lsq_backward);
  module.def("sat_weight_forward", &sat_weight_forward);
  module.def("sat_weight_backward", &sat_weight_backward);
}
