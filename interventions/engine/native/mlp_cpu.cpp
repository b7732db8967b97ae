// The paper's MLP on a CPU: one member's training step, and its evaluation, each one call that releases
// the GIL (so members on different worker threads run truly in parallel). float32 and float64 (templates
// on the scalar type; the float64 GeLU uses ATen's vectorized erf and exp, i.e. Sleef's 1-ulp versions).
//
// The mathematics of models.MLP.loss_grads + optim.AdamW (the ATen path), arranged for one core:
//   * the first layer is the ATen path's two table lookups (Ta = E W1a + b1, Tb = E W1b), fused with the
//     GeLU, which also writes GeLU'(pre), so pre is never stored and the backward is one multiply; erf is
//     ATen's AVX2 polynomial (Abramowitz-Stegun 7.1.26), its exp(-x^2/2) shared with GeLU's derivative;
//   * the softmax is ATen's own CPU kernel (what the ATen path calls), then d loss / d logits in one pass
//     over each row, in levers.loss_and_dlogits's order: in softmax collapse both paths agree bitwise;
//   * the backward scatters dh * GeLU' into the table rows in example order;
//   * the three (N x H x p) products are MKL GEMMs with p padded to 16 columns, as in the ATen path, over
//     blocks of 512 pairs whose activations stay in the core's L2 cache;
//   * AdamW is torch's fused kernel, the same call as optim.py.
// Elsewhere rounding differs from the ATen path in the last bits (erf, GEMM and sum order): each path is
// deterministic, the two are not bit-identical; tests/test_engine_native.py bounds the difference.
#include <torch/extension.h>
#include <ATen/cpu/vec/vec.h>
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

void check(bool ok, const char* what) { TORCH_CHECK(ok, "interventions native MLP kernels: ", what); }

template <typename T>
T hsum(const at::vec::Vectorized<T>& v) {  // lanes summed in order
  using Vec = at::vec::Vectorized<T>;
  T lanes[Vec::size()];
  v.store(lanes);
  T s = 0;
  for (int i = 0; i < Vec::size(); ++i) s += lanes[i];
  return s;
}

// exp(x), inline (Cephes expf: range reduction by ln 2, degree-6 polynomial; <= 2 ulp over the normal
// range). Below ln(FLT_MIN) it returns the subnormal result, as ATen's exp does (2^n applied in two
// normal factors, so the result rounds once, in the last multiply), and 0 below about -103.97. A call
// into Sleef per vector cost more than this arithmetic.
using Vecf = at::vec::Vectorized<float>;

inline Vecf exp_inline(const Vecf& x_in) {
  using Vec = Vecf;
  const Vec hi(88.3762626647949f), lo(-104.0f);  // exp(-104) rounds to 0
  const Vec x0 = at::vec::minimum(at::vec::maximum(x_in, lo), hi);
  const Vec fx = (at::vec::fmadd(x0, Vec(1.44269504088896341f), Vec(0.5f))).floor();
  Vec x = at::vec::fmadd(fx, Vec(-0.693359375f), x0);
  x = at::vec::fmadd(fx, Vec(2.12194440e-4f), x);
  Vec y(1.9875691500e-4f);
  y = at::vec::fmadd(y, x, Vec(1.3981999507e-3f));
  y = at::vec::fmadd(y, x, Vec(8.3334519073e-3f));
  y = at::vec::fmadd(y, x, Vec(4.1665795894e-2f));
  y = at::vec::fmadd(y, x, Vec(1.6666665459e-1f));
  y = at::vec::fmadd(y, x, Vec(5.0000001201e-1f));
  y = at::vec::fmadd(y, x * x, x + Vec(1.0f));
  const Vec f1 = (fx * Vec(0.5f)).floor(), f2 = fx - f1;  // 2^fx = 2^f1 2^f2, each in [-75, 64]
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256i n1 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(f1), bias), 23);
  const __m256i n2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(f2), bias), 23);
  return y * Vec(_mm256_castsi256_ps(n1)) * Vec(_mm256_castsi256_ps(n2));
}

// gelu(x) = x Phi(x) and gelu'(x) = Phi(x) + x phi(x), exact-erf GeLU; erf(u), u = x / sqrt(2), as in
// ATen's Vectorized<float>::erf (|error| < 1.5e-7).
inline void gelu_and_grad(const Vecf& x, Vecf& h, Vecf& gd) {
  using Vec = Vecf;
  const Vec kAlpha(float(M_SQRT1_2)), kBeta(float(M_2_SQRTPI * M_SQRT1_2 * 0.5));
  const Vec one(1.0f), half(0.5f);
  const Vec p(0.3275911f), p1(0.254829592f), p2(-0.284496736f), p3(1.421413741f), p4(-1.453152027f),
      p5(1.061405429f);
  const Vec u = x * kAlpha;
  const Vec t = one / at::vec::fmadd(p, u.abs(), one);
  const Vec r = at::vec::fmadd(at::vec::fmadd(at::vec::fmadd(at::vec::fmadd(p5, t, p4), t, p3), t, p2), t, p1);
  const Vec ex = exp_inline(Vec(0.0f) - u * u);  // exp(-x^2 / 2): erf's and phi's
  const Vec erf_abs = one - r * t * ex;
  const Vec cdf = half * (one + Vec::blendv(erf_abs, Vec(0.0f) - erf_abs, u < Vec(0.0f)));
  h = x * cdf;
  gd = cdf + x * (kBeta * ex);
}

// float64: gelu(x) = x Phi(x), Phi from ATen's Vectorized<double>::erf (what the ATen path's gelu calls),
// gelu'(x) = Phi(x) + x phi(x) with ATen's exp.
inline void gelu_and_grad(const at::vec::Vectorized<double>& x, at::vec::Vectorized<double>& h,
                          at::vec::Vectorized<double>& gd) {
  using Vec = at::vec::Vectorized<double>;
  const Vec cdf = Vec(0.5) * (Vec(1.0) + (x * Vec(M_SQRT1_2)).erf());
  h = x * cdf;
  gd = cdf + x * (Vec(M_2_SQRTPI * M_SQRT1_2 * 0.5) * (Vec(-0.5) * x * x).exp());
}

// Work buffers: views into `ws`, the calling thread's buffer of the working precision, grown on demand and kept between
// calls (fresh MB-sized allocations every step cost page faults).
struct Carver {
  at::Tensor& ws;
  int64_t off = 0;
  Carver(at::Tensor& w, at::ScalarType st, std::initializer_list<int64_t> sizes) : ws(w) {
    check(ws.is_contiguous() && ws.scalar_type() == st, "workspace: a contiguous tensor of the parameters' dtype");
    int64_t need = 0;
    for (int64_t n : sizes) need += (n + 15) / 16 * 16;
    if (ws.numel() < need) ws.resize_({need});
  }
  at::Tensor take(at::IntArrayRef shape) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    at::Tensor t = ws.narrow(0, off, n).view(shape);
    off += (n + 15) / 16 * 16;  // 64-byte aligned views
    return t;
  }
};

// Ta = E W1a + b1, Tb = E W1b (2, p, H); W1a, W1b: the rows of W1 reading the a- and b-embedding.
void tables(const std::vector<at::Tensor>& P, at::Tensor& T) {
  const int64_t d = P[0].size(1);
  at::Tensor Ta = T[0], Tb = T[1];
  at::addmm_out(Ta, P[3], P[0], P[1].narrow(0, 0, d));
  at::mm_out(Tb, P[0], P[1].narrow(0, d, d));
}

// W2 padded to Pp columns with zeros, b2 with `fill` (-inf keeps the pads out of a softmax).
void readout(const std::vector<at::Tensor>& P, at::Tensor& W2p, at::Tensor& b2p, double fill) {
  const int64_t p = P[2].size(1);
  W2p.zero_();
  W2p.narrow(1, 0, p).copy_(P[2]);
  b2p.fill_(fill);
  b2p.narrow(0, 0, p).copy_(P[4]);
}

// z (N, P) = h W2p of a block of N pairs, without the bias; the first p columns real. Replaces z by
// d loss / d logits (the loss being the mean over all Ntot training pairs), adds the column sums of
// d loss / d logits to db2 (P,) and returns the block's summed per-pair loss value, which only serves
// the divergence check (non-finite exactly when the logits are). The operations, and their order, are
// levers.loss_and_dlogits's (the ATen path), so both round alike.
template <typename T>
double loss_rows(at::Tensor& zb, const T* bias, const int64_t* y, int64_t p, T inv_tau, bool ce, T* db2,
                 int64_t Ntot) {
  using Vec = at::vec::Vectorized<T>;
  const int64_t N = zb.size(0), P = zb.size(1);
  T* z = zb.data_ptr<T>();
  const T g_scale = ce ? inv_tau / T(Ntot) : inv_tau * T(2.0 / Ntot);
  const Vec vinv(inv_tau), vg(g_scale);
  double loss = 0.0;
  if (ce) {
    for (int64_t i = 0; i < N * P; i += Vec::size())  // logits / tau; pads -inf
      ((Vec::loadu(z + i) + Vec::loadu(bias + i % P)) * vinv).store(z + i);
    // ATen's own softmax kernel, the ATen path's call: in softmax collapse, which rows have p_y == 1
    // exactly and which entries underflow (to 0 or to a subnormal) decide which gradients vanish, and an
    // exp or a sum of our own decided them differently (issue: the raised arm grokked 11% early)
    at::_softmax_out(zb, zb, 1, false);
    for (int64_t i = 0; i < N; ++i) {
      T* s = z + i * P;
      const int64_t yi = y[i];
      loss -= std::log(double(std::max(s[yi], std::numeric_limits<T>::min())));
      s[yi] = s[yi] + T(-1);  // softmax - onehot
      for (int64_t j = 0; j < P; j += Vec::size()) (Vec::loadu(s + j) * vg).store(s + j);
    }
  } else {  // pads: zero logits and bias, zero target: no loss, zero gradient
    for (int64_t i = 0; i < N; ++i) {
      T* s = z + i * P;
      for (int64_t j = 0; j < p; ++j) {
        const T r = (s[j] + bias[j]) * inv_tau - (j == y[i] ? T(1) : T(0));
        loss += double(r) * double(r);
        s[j] = r * g_scale;
      }
    }
  }
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < P; j += Vec::size()) (Vec::loadu(db2 + j) + Vec::loadu(z + i * P + j)).store(db2 + j);
  return loss;
}

// dE = dTa W1a^T + dTb W1b^T: each entry a dot product of length 2H in a fixed order. Own loop, not
// MKL: MKL's result for this small product with a transposed operand differed in the last bit between a
// thread's first training step and its later ones (MKL_CBWR did not prevent it, nor did warming up),
// which broke bit-identical resume.
template <typename T>
void embed_grad(const T* dTa, const T* dTb, const T* W1a, const T* W1b, int64_t p, int64_t d, int64_t H, T* dE) {
  using Vec = at::vec::Vectorized<T>;
  for (int64_t x = 0; x < p; ++x) {
    for (int64_t k = 0; k < d; ++k) {
      Vec acc0(T(0)), acc1(T(0));
      for (int64_t j = 0; j < H; j += Vec::size()) {
        acc0 = at::vec::fmadd(Vec::loadu(dTa + x * H + j), Vec::loadu(W1a + k * H + j), acc0);
        acc1 = at::vec::fmadd(Vec::loadu(dTb + x * H + j), Vec::loadu(W1b + k * H + j), acc1);
      }
      dE[x * d + k] = hsum(acc0 + acc1);
    }
  }
}

// One member's training step (train_step below), in T.
template <typename T>
double train_step_t(std::vector<at::Tensor>& P, std::vector<at::Tensor>& G, std::vector<at::Tensor>& m1,
                    std::vector<at::Tensor>& m2, const at::Tensor& a, const at::Tensor& b, const at::Tensor& y,
                    double inv_tau, bool ce, const at::Tensor& adam_step, const std::vector<double>& hp,
                    at::Tensor& ws) {
  using Vec = at::vec::Vectorized<T>;
  const int64_t p = P[0].size(0), d = P[0].size(1), H = P[1].size(1), N = a.size(0), Pp = (p + 15) / 16 * 16;
  check(H % 8 == 0, "d_hidden must be a multiple of 8");
  check(a.is_contiguous() && b.is_contiguous() && y.is_contiguous() && a.scalar_type() == at::kLong &&
        b.scalar_type() == at::kLong && y.scalar_type() == at::kLong, "indices: contiguous int64");
  for (const auto& x : P) check(x.is_contiguous(), "parameters: contiguous");
  for (const auto& g : G) check(g.is_contiguous(), "gradients: contiguous");
  const int64_t B = std::min<int64_t>(N, 512);  // pairs per block: its h, GeLU', logits stay in L2
  Carver c(ws, P[0].scalar_type(), {2 * p * H, H * Pp, Pp, B * H, B * H, B * Pp, 2 * p * H, H * Pp, Pp});
  at::Tensor Tt = c.take({2, p, H}), W2p = c.take({H, Pp}), b2p = c.take({Pp});
  at::Tensor h = c.take({B, H}), gd = c.take({B, H}), z = c.take({B, Pp});
  at::Tensor dT = c.take({2, p, H}), dW2 = c.take({H, Pp}), db2 = c.take({Pp});
  tables(P, Tt);
  readout(P, W2p, b2p, ce ? -std::numeric_limits<double>::infinity() : 0.0);
  const T* t = Tt.data_ptr<T>();
  const int64_t *pa = a.data_ptr<int64_t>(), *pb = b.data_ptr<int64_t>();
  T *ph = h.data_ptr<T>(), *pg = gd.data_ptr<T>();
  db2.zero_();
  dT.zero_();
  T* pdT = dT.data_ptr<T>();
  double loss_sum = 0.0;
  for (int64_t n0 = 0; n0 < N; n0 += B) {
    const int64_t nb = std::min(B, N - n0);
    for (int64_t n = 0; n < nb; ++n) {
      const T* ra = t + pa[n0 + n] * H;
      const T* rb = t + (p + pb[n0 + n]) * H;
      for (int64_t j = 0; j < H; j += Vec::size()) {
        Vec hv, gv;
        gelu_and_grad(Vec::loadu(ra + j) + Vec::loadu(rb + j), hv, gv);
        hv.store(ph + n * H + j);
        gv.store(pg + n * H + j);
      }
    }
    at::Tensor hb = h.narrow(0, 0, nb), zb = z.narrow(0, 0, nb);
    at::mm_out(zb, hb, W2p);
    loss_sum += loss_rows<T>(zb, b2p.data_ptr<T>(), y.data_ptr<int64_t>() + n0, p, T(inv_tau), ce,
                             db2.data_ptr<T>(), N);
    if (n0 == 0) at::mm_out(dW2, hb.t(), zb); else dW2.addmm_(hb.t(), zb);
    at::mm_out(hb, zb, W2p.t());
    for (int64_t n = 0; n < nb; ++n) {
      T* ra = pdT + pa[n0 + n] * H;
      T* rb = pdT + (p + pb[n0 + n]) * H;
      for (int64_t j = 0; j < H; j += Vec::size()) {
        const Vec v = Vec::loadu(ph + n * H + j) * Vec::loadu(pg + n * H + j);
        (Vec::loadu(ra + j) + v).store(ra + j);
        (Vec::loadu(rb + j) + v).store(rb + j);
      }
    }
  }
  const double loss = loss_sum / double(N);
  const at::Tensor dTa = dT[0], dTb = dT[1];
  G[2].copy_(dW2.narrow(1, 0, p));
  G[4].copy_(db2.narrow(0, 0, p));
  at::sum_out(G[3], dTa, {0});  // every pair lands in exactly one row of Ta
  embed_grad<T>(dTa.data_ptr<T>(), dTb.data_ptr<T>(), P[1].data_ptr<T>(), P[1].data_ptr<T>() + d * H, p, d, H,
                G[0].data_ptr<T>());
  at::Tensor GW1a = G[1].narrow(0, 0, d), GW1b = G[1].narrow(0, d, d);
  at::mm_out(GW1a, P[0].t(), dTa);
  at::mm_out(GW1b, P[0].t(), dTb);
  const double lr = hp[0], beta1 = hp[1], beta2 = hp[2], eps = hp[3], wd = hp[4];
  std::vector<at::Tensor> steps(3, adam_step);
  at::_fused_adamw_({P[0], P[1], P[2]}, {G[0], G[1], G[2]}, {m1[0], m1[1], m1[2]}, {m2[0], m2[1], m2[2]}, {},
                    steps, lr, beta1, beta2, wd, eps, false, false);
  steps.resize(2);
  at::_fused_adamw_({P[3], P[4]}, {G[3], G[4]}, {m1[3], m1[4]}, {m2[3], m2[4]}, {}, steps, lr, beta1, beta2, 0.0,
                    eps, false, false);
  return loss;
}

// Sums over n rows of post-tau logits s (n, p) and their softmax prob (read only with `full`), labels y,
// kinds (0 undefined pair, 1 training, 2 test) into out: [train hits, test hits, |s|, train loss, test
// loss, sc (p_y == 1 exactly), saturated (max p > 0.999)]; Cohort._evaluate's definitions.
template <typename T>
void eval_rows(const T* ps, const T* pp, int64_t n, int64_t p, const int64_t* lab, const uint8_t* kinds, bool ce,
               bool full, std::vector<double>& out) {
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t kind = kinds[i];
    if (kind == 0) continue;
    const int64_t y = lab[i];
    const T* s = ps + i * p;
    T m = -std::numeric_limits<T>::infinity(), sq = T(0);
    int64_t arg = 0;
    for (int64_t j = 0; j < p; ++j) {
      sq += s[j] * s[j];
      if (!(s[j] <= m) && !(m != m)) { m = s[j]; arg = j; }  // torch.argmax: the first max; NaN wins
    }
    out[kind == 1 ? 0 : 1] += arg == y;
    out[2] += std::sqrt(sq);
    if (!full) continue;
    double per = 0.0;
    if (ce) {
      T sum = T(0);
      for (int64_t j = 0; j < p; ++j) sum += std::exp(s[j] - m);
      per = double(m) + std::log(double(sum)) - double(s[y]);
    } else {
      for (int64_t j = 0; j < p; ++j) {
        const double e = double(s[j]) - (j == y ? 1.0 : 0.0);
        per += e * e;
      }
    }
    out[kind == 1 ? 3 : 4] += per;
    if (kind == 1) {
      const T* pr = pp + i * p;
      out[5] += pr[y] == T(1);
      out[6] += *std::max_element(pr, pr + p) > T(0.999);
    }
  }
}

// One member over all p^2 pairs, Cohort._evaluate's definitions. labels (p^2,) int64; split (p^2,) uint8:
// 0 undefined pair, 1 training, 2 test. Returns the sums [train hits, test hits, |logits / tau| over the
// defined pairs, train loss, test loss, sc (p_y == 1 exactly), saturated (max p > 0.999)], the last four
// over training pairs (losses over both) and only with `full`.
template <typename T>
std::vector<double> evaluate_t(std::vector<at::Tensor>& P, const at::Tensor& labels, const at::Tensor& split,
                               double inv_tau_d, bool ce, bool full, at::Tensor& ws) {
  using Vec = at::vec::Vectorized<T>;
  const int64_t p = P[0].size(0), H = P[1].size(1), Pp = (p + 15) / 16 * 16;
  check(H % 8 == 0, "d_hidden must be a multiple of 8");
  check(labels.is_contiguous() && split.is_contiguous() && split.scalar_type() == at::kByte, "labels/split");
  const int64_t R = std::max<int64_t>(1, 1024 / p);  // a-values per block of ~1024 pairs
  Carver c(ws, P[0].scalar_type(), {2 * p * H, H * Pp, Pp, R * p * H, R * p * Pp, R * p * p, R * p * p});
  at::Tensor Tt = c.take({2, p, H}), W2p = c.take({H, Pp}), b2p = c.take({Pp});
  at::Tensor h = c.take({R * p, H}), z = c.take({R * p, Pp});
  at::Tensor S = c.take({R * p, p}), prob = c.take({R * p, p});  // logits / tau; their softmax
  tables(P, Tt);
  readout(P, W2p, b2p, 0.0);
  const T* t = Tt.data_ptr<T>();
  const int64_t* lab = labels.data_ptr<int64_t>();
  const uint8_t* sp = split.data_ptr<uint8_t>();
  const T inv_tau = T(inv_tau_d);
  std::vector<double> out(7, 0.0);
  for (int64_t a0 = 0; a0 < p; a0 += R) {
    const int64_t n = std::min(R, p - a0) * p;
    T* ph = h.data_ptr<T>();
    for (int64_t i = 0; i < n; ++i) {
      const T* ra = t + (a0 + i / p) * H;  // Ta[a]
      const T* rb = t + (p + i % p) * H;   // Tb[b]
      for (int64_t j = 0; j < H; j += Vec::size()) {
        Vec hv, gv;  // gv unused here
        gelu_and_grad(Vec::loadu(ra + j) + Vec::loadu(rb + j), hv, gv);
        hv.store(ph + i * H + j);
      }
    }
    at::Tensor zb = z.narrow(0, 0, n), Sb = S.narrow(0, 0, n), pb = prob.narrow(0, 0, n);
    at::addmm_out(zb, b2p, h.narrow(0, 0, n), W2p);
    const T* pz = zb.data_ptr<T>();
    T* ps = Sb.data_ptr<T>();
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < p; ++j) ps[i * p + j] = pz[i * Pp + j] * inv_tau;
    // sc_frac and saturation from ATen's softmax (the ATen path's torch.softmax): p_y == 1 exactly is
    // a property of that arithmetic
    if (full) at::_softmax_out(pb, Sb, 1, false);
    eval_rows<T>(ps, pb.data_ptr<T>(), n, p, lab + a0 * p, sp + a0 * p, ce, full, out);
  }
  return out;
}

// The entry points: float32 or float64, from the parameters' dtype.
bool is_double(const at::Tensor& x, const char* what) {
  check(x.device().is_cpu() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble), what);
  return x.scalar_type() == at::kDouble;
}

// One member's training step. P, G, m1, m2: E (p, d), W1 (2d, H), W2 (H, p), b1 (H,), b2 (p,) (no member
// dim; G is scratch); a, b, y (N,): the training pairs' operands and labels; hp: lr, beta1, beta2, eps,
// weight decay. Loss and gradients on all N pairs, then AdamW (weight decay on E, W1, W2, not on the
// biases). Returns the loss before the step.
double train_step(std::vector<at::Tensor> P, std::vector<at::Tensor> G, std::vector<at::Tensor> m1,
                  std::vector<at::Tensor> m2, const at::Tensor& a, const at::Tensor& b, const at::Tensor& y,
                  double inv_tau, bool ce, const at::Tensor& adam_step, std::vector<double> hp, at::Tensor ws) {
  at::NoGradGuard no_grad;
  return is_double(P[0], "train_step: float32 or float64 CPU tensors")
             ? train_step_t<double>(P, G, m1, m2, a, b, y, inv_tau, ce, adam_step, hp, ws)
             : train_step_t<float>(P, G, m1, m2, a, b, y, inv_tau, ce, adam_step, hp, ws);
}

std::vector<double> evaluate(std::vector<at::Tensor> P, const at::Tensor& labels, const at::Tensor& split,
                             double inv_tau, bool ce, bool full, at::Tensor ws) {
  at::NoGradGuard no_grad;
  return is_double(P[0], "evaluate: float32 or float64 CPU tensors")
             ? evaluate_t<double>(P, labels, split, inv_tau, ce, full, ws)
             : evaluate_t<float>(P, labels, split, inv_tau, ce, full, ws);
}

// Test hooks: the step's loss rows and the evaluation's row sums on given logits (tests/test_engine_native.py
// compares them with the ATen path on constructed logits in the softmax-collapse regime).
template <typename T>
double loss_dlogits_t(at::Tensor& z, const at::Tensor& bias, const at::Tensor& y, double inv_tau, bool ce, int64_t p,
                      int64_t Ntot, at::Tensor& db2) {
  return loss_rows<T>(z, bias.data_ptr<T>(), y.data_ptr<int64_t>(), p, T(inv_tau), ce, db2.data_ptr<T>(), Ntot);
}

std::tuple<double, at::Tensor, at::Tensor> loss_dlogits(at::Tensor z, at::Tensor bias, at::Tensor y, double inv_tau,
                                                         bool ce, int64_t p, int64_t Ntot) {
  check(z.is_contiguous() && z.dim() == 2 && z.size(1) % 8 == 0 && bias.numel() == z.size(1) &&
            bias.scalar_type() == z.scalar_type(),
        "loss_dlogits: z (N, P) contiguous, P a multiple of 8, bias (P,) of z's dtype");
  at::Tensor db2 = at::zeros({z.size(1)}, z.options()), bc = bias.contiguous(), yc = y.contiguous();
  const double loss = is_double(z, "loss_dlogits: float32 or float64")
                          ? loss_dlogits_t<double>(z, bc, yc, inv_tau, ce, p, Ntot, db2)
                          : loss_dlogits_t<float>(z, bc, yc, inv_tau, ce, p, Ntot, db2);
  return {loss, z, db2};
}

std::vector<double> eval_logits(at::Tensor s, at::Tensor y, at::Tensor kinds, bool ce) {
  check(s.is_contiguous() && s.dim() == 2, "eval_logits: s (n, p) contiguous");
  at::Tensor prob = at::_softmax(s, 1, false), yc = y.contiguous(), kc = kinds.contiguous();
  std::vector<double> out(7, 0.0);
  if (is_double(s, "eval_logits: float32 or float64"))
    eval_rows<double>(s.data_ptr<double>(), prob.data_ptr<double>(), s.size(0), s.size(1), yc.data_ptr<int64_t>(),
                      kc.data_ptr<uint8_t>(), ce, true, out);
  else
    eval_rows<float>(s.data_ptr<float>(), prob.data_ptr<float>(), s.size(0), s.size(1), yc.data_ptr<int64_t>(),
                     kc.data_ptr<uint8_t>(), ce, true, out);
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("train_step", &train_step, py::call_guard<py::gil_scoped_release>());
  m.def("evaluate", &evaluate, py::call_guard<py::gil_scoped_release>());
  m.def("loss_dlogits", &loss_dlogits);
  m.def("eval_logits", &eval_logits);
}
