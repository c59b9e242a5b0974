// Fused spline part of a KAN layer on uniform knots, for a batch of nets (CPU, float32).
//
//   y[b, n, o] = sum_i sum_m W[b, i, m, o] B_m(h[b, n, i])
//
// B_m are the G + k B-splines of order k on the knots lo + step * (q - k), q = 0 .. G + 2k
// (zero outside [first knot, last knot), as pykan's B_batch). A point in knot interval j at
// local offset u touches splines m = j - r, r = 0 .. k, with values sum_e u^e M[e][r]
// (M: the cardinal B-spline pieces, passed in by Python). Only those k + 1 terms are visited,
// so no dense (points x inputs x splines) basis is ever materialized: forward and backward are
// O(N I k O) per net with the weights of one net (I * C * O floats) in L1/L2.
//
// Every net is processed whole by one thread (parallel over the net axis only), in a fixed
// order, so results do not depend on the number of threads. No fast-math: IEEE arithmetic.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

struct Knots {
  float lo;     // first knot: lo_grid - k * step
  float inv;    // 1 / step
  int n_int;    // G + 2k knot intervals
  int n_coef;   // C = G + k splines
  int order;    // k
};

// Knot interval j and local offset u of x; false outside [first knot, last knot) or NaN.
inline bool locate(float x, const Knots& K, int& j, float& u) {
  const float t = (x - K.lo) * K.inv;
  if (!(t >= 0.0f && t < static_cast<float>(K.n_int))) return false;
  j = static_cast<int>(t);  // t >= 0: truncation is floor
  u = t - static_cast<float>(j);
  return true;
}

constexpr int kMaxOrder = 7;

// vals[r] = sum_{e < n_pow} u^e P[e][r], r = 0 .. k; P is (n_pow, k + 1) row-major. The powers
// are formed once and every r is an independent sum (no Horner latency chain).
inline void pieces(float u, const float* P, int n_pow, int k1, float* vals) {
  float pw[kMaxOrder + 1];
  float p = 1.0f;
  for (int e = 0; e < n_pow; ++e, p *= u) pw[e] = p;
  for (int r = 0; r < k1; ++r) vals[r] = 0.0f;
  for (int e = 0; e < n_pow; ++e)
    for (int r = 0; r < k1; ++r) vals[r] += pw[e] * P[e * k1 + r];
}

Knots make_knots(double lo, double step, int64_t grid_size, int64_t order) {
  return Knots{static_cast<float>(lo - order * step), static_cast<float>(1.0 / step),
               static_cast<int>(grid_size + 2 * order), static_cast<int>(grid_size + order),
               static_cast<int>(order)};
}

void check(const torch::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous(), name,
              " must be a contiguous CPU float32 tensor");
  TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dimensions");
}

}  // namespace

namespace {

// OT: the output width O as a compile-time constant (unrolled, vectorized inner loops), 0 = runtime.
template <int OT, int KT>
void forward_impl(const torch::Tensor& h, const torch::Tensor& w, const torch::Tensor& M, const Knots& K,
                  torch::Tensor& y) {
  const int64_t B = h.size(0), N = h.size(1), I = h.size(2), C = w.size(2);
  const int64_t O = OT > 0 ? OT : w.size(3);
  const int k1 = KT >= 0 ? KT + 1 : K.order + 1;
  const int order = k1 - 1;
  const float* hp = h.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const float* P = M.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    float vals[kMaxOrder + 1];
    std::vector<float> acc_runtime(OT > 0 ? 0 : O);
    float acc_fixed[OT > 0 ? OT : 1];  // compile-time width: kept in registers
    float* __restrict__ a = OT > 0 ? acc_fixed : acc_runtime.data();
    for (int64_t b = b0; b < b1; ++b) {
      const float* wb = wp + b * I * C * O;
      for (int64_t n = 0; n < N; ++n) {
        const float* hx = hp + (b * N + n) * I;
        for (int64_t o = 0; o < O; ++o) a[o] = 0.0f;
        for (int64_t i = 0; i < I; ++i) {
          int j;
          float u;
          if (!locate(hx[i], K, j, u)) continue;
          pieces(u, P, k1, k1, vals);
          for (int r = 0; r < k1; ++r) {
            const int m = j - r;
            if (m < 0 || m >= C) continue;
            const float v = vals[r];
            const float* __restrict__ wr = wb + (i * C + m) * O;
            for (int64_t o = 0; o < O; ++o) a[o] += v * wr[o];
          }
        }
        std::copy(a, a + O, yp + (b * N + n) * O);
      }
    }
  });
}

template <int OT, int KT>
void backward_impl(const torch::Tensor& gy, const torch::Tensor& h, const torch::Tensor& w, const torch::Tensor& M,
                   const torch::Tensor& dM, const Knots& K, bool need_gh, torch::Tensor& gh, torch::Tensor& gw) {
  const int64_t B = h.size(0), N = h.size(1), I = h.size(2), C = w.size(2);
  const int64_t O = OT > 0 ? OT : w.size(3);
  const int k1 = KT >= 0 ? KT + 1 : K.order + 1;
  const int order = k1 - 1;
  const float* gyp = gy.data_ptr<float>();
  const float* hp = h.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const float* P = M.data_ptr<float>();
  const float* dP = dM.data_ptr<float>();
  float* gwp = gw.data_ptr<float>();
  float* ghp = need_gh ? gh.data_ptr<float>() : nullptr;
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    float vals[kMaxOrder + 1], dvals[kMaxOrder + 1];
    std::vector<float> d_runtime(OT > 0 ? 0 : O);
    float d_fixed[OT > 0 ? OT : 1];
    float* __restrict__ d = OT > 0 ? d_fixed : d_runtime.data();
    std::vector<float> g_runtime(OT > 0 ? 0 : O);
    float g_fixed[OT > 0 ? OT : 1];
    float* __restrict__ g = OT > 0 ? g_fixed : g_runtime.data();
    for (int64_t b = b0; b < b1; ++b) {
      const float* wb = wp + b * I * C * O;
      float* gwb = gwp + b * I * C * O;
      for (int64_t n = 0; n < N; ++n) {
        const float* hx = hp + (b * N + n) * I;
        for (int64_t o = 0; o < O; ++o) g[o] = gyp[(b * N + n) * O + o];  // local copy: no aliasing
        for (int64_t i = 0; i < I; ++i) {
          int j;
          float u;
          if (!locate(hx[i], K, j, u)) {
            if (need_gh) ghp[(b * N + n) * I + i] = 0.0f;
            continue;
          }
          pieces(u, P, k1, k1, vals);
          if (need_gh) pieces(u, dP, order, k1, dvals);
          // gw[i, m, :] += B_m g;  gh[i] = g . sum_m B'_m w[i, m, :] (one dot per input, not per spline)
          for (int64_t o = 0; o < O; ++o) d[o] = 0.0f;
          for (int r = 0; r < k1; ++r) {
            const int m = j - r;
            if (m < 0 || m >= C) continue;
            const float v = vals[r], dv = dvals[r];
            float* __restrict__ gwr = gwb + (i * C + m) * O;
            const float* __restrict__ wr = wb + (i * C + m) * O;
            for (int64_t o = 0; o < O; ++o) gwr[o] += v * g[o];
            if (need_gh)
              for (int64_t o = 0; o < O; ++o) d[o] += dv * wr[o];
          }
          float gx = 0.0f;
          if (need_gh)
            for (int64_t o = 0; o < O; ++o) gx += g[o] * d[o];
          if (need_gh) ghp[(b * N + n) * I + i] = gx;
        }
      }
    }
  });
}

// Calls FN<O, k>(...) with compile-time O and k = 3 (cubic) for the common cases, else runtime.
#define DISPATCH_WIDTH_K(KT, O, FN, ...)             \
  switch (O) {                                       \
    case 1: FN<1, KT>(__VA_ARGS__); break;           \
    case 2: FN<2, KT>(__VA_ARGS__); break;           \
    case 4: FN<4, KT>(__VA_ARGS__); break;           \
    case 8: FN<8, KT>(__VA_ARGS__); break;           \
    case 10: FN<10, KT>(__VA_ARGS__); break;         \
    case 16: FN<16, KT>(__VA_ARGS__); break;         \
    default: FN<0, KT>(__VA_ARGS__);                 \
  }
#define DISPATCH(order, O, FN, ...)                                      \
  if (order == 3) {                                                      \
    DISPATCH_WIDTH_K(3, O, FN, __VA_ARGS__)                              \
  } else {                                                               \
    DISPATCH_WIDTH_K(-1, O, FN, __VA_ARGS__)                             \
  }

}  // namespace

// h (B, N, I), w (B, I, C, O), M (k+1, k+1) -> y (B, N, O)
torch::Tensor spline_forward(torch::Tensor h, torch::Tensor w, torch::Tensor M, double lo, double step,
                             int64_t grid_size, int64_t order) {
  check(h, "h", 3);
  check(w, "w", 4);
  check(M, "M", 2);
  TORCH_CHECK(order >= 0 && order <= kMaxOrder, "spline order must be in [0, ", kMaxOrder, "]");
  const Knots K = make_knots(lo, step, grid_size, order);
  TORCH_CHECK(w.size(0) == h.size(0) && w.size(1) == h.size(2) && w.size(2) == K.n_coef,
              "w must be (B, I, G + k, O)");
  auto y = torch::empty({h.size(0), h.size(1), w.size(3)}, h.options());
  DISPATCH(order, w.size(3), forward_impl, h, w, M, K, y);
  return y;
}

// Gradients of spline_forward: (gh (B, N, I) or undefined, gw (B, I, C, O)). dM (k, k+1): the
// x-derivative pieces (already divided by the knot spacing).
std::vector<torch::Tensor> spline_backward(torch::Tensor gy, torch::Tensor h, torch::Tensor w, torch::Tensor M,
                                           torch::Tensor dM, double lo, double step, int64_t grid_size,
                                           int64_t order, bool need_gh) {
  check(gy, "gy", 3);
  check(h, "h", 3);
  check(w, "w", 4);
  const Knots K = make_knots(lo, step, grid_size, order);
  auto gw = torch::zeros_like(w);
  auto gh = need_gh ? torch::empty_like(h) : torch::Tensor();
  DISPATCH(order, w.size(3), backward_impl, gy, h, w, M, dM, K, need_gh, gh, gw);
  return {gh, gw};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &spline_forward, "fused uniform-knot KAN spline layer, forward");
  m.def("backward", &spline_backward, "fused uniform-knot KAN spline layer, backward");
}
