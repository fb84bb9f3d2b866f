// Mamba's selective scan on a CPU, forward and backward, one pass over each token's state per direction:
//   h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t x_t B_tᵀ  (D × N per sequence),  y_t = h_t C_t.
// Built on first use by icl/scan_kernel.py (torch.utils.cpp_extension) and called through its autograd Function.
// Why a kernel: PyTorch's token loop passes each (batch, D, N) state through memory once per elementwise op (4 ops
// forward, 10 backward); here one sequence's state (N × D floats, 8 KB at the smoke scale) stays in L1 and every
// token is one loop over it. The backward recomputes the states of one sequence into a buffer of its own (T × N × D)
// instead of keeping (batch, T, D, N) between forward and backward.
// Layouts: x, delta (batch, T, D); B, C (batch, T, N); A (D, N); all contiguous. The state is kept (N, D) so the
// inner loop runs over D, contiguous, without horizontal sums.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

// 2^v: 2^round(v) through the exponent bits times Cephes' exp2f polynomial on [−0.5, 0.5] (relative error ≤ 7.1e-8);
// inlined so the loop over D vectorises (libm's exp2f is a call per element).
inline float exp2_approx(float v) {
  v = v < -126.f ? -126.f : (v > 126.f ? 126.f : v);
  const float r = __builtin_rintf(v);
  const float f = v - r;
  float p = 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  const int32_t bits = (static_cast<int32_t>(r == r ? r : 0.f) + 127) << 23;  // NaN: p carries it (no UB cast)
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
inline double exp2_approx(double v) { return std::exp2(v); }  // float64: the gradient checks, exact

constexpr double kLog2E = 1.4426950408889634;

// (D, N) → (N, D), scaled.
template <typename S>
std::vector<S> transposed(const S* A, int64_t D, int64_t N, S scale) {
  std::vector<S> out(N * D);
  for (int64_t d = 0; d < D; ++d)
    for (int64_t n = 0; n < N; ++n) out[n * D + d] = A[d * N + n] * scale;
  return out;
}

// One sequence forward from h = 0; writes y (T, D) when given and, when `states` is given, every h_t into states
// (T, N, D).
template <typename S>
void run_sequence(const S* x, const S* dl, const S* A2, const S* B, const S* C, int64_t T, int64_t D, int64_t N,
                  S* h, S* dx, S* y, S* states) {
  std::fill(h, h + N * D, S(0));
  for (int64_t t = 0; t < T; ++t) {
    const S* delta = dl + t * D;
    const S* xt = x + t * D;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) dx[d] = delta[d] * xt[d];
    S* yt = y ? y + t * D : nullptr;
    if (yt) std::fill(yt, yt + D, S(0));
    for (int64_t n = 0; n < N; ++n) {
      const S b = B[t * N + n], c = C[t * N + n];
      const S* a2 = A2 + n * D;
      S* hn = h + n * D;
      if (yt) {
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) {
          const S v = exp2_approx(delta[d] * a2[d]) * hn[d] + dx[d] * b;
          hn[d] = v;
          yt[d] += v * c;
        }
      } else {
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) hn[d] = exp2_approx(delta[d] * a2[d]) * hn[d] + dx[d] * b;
      }
    }
    if (states) std::copy(h, h + N * D, states + t * N * D);
  }
}

template <typename S>
void forward_impl(const S* x, const S* dl, const S* A, const S* B, const S* C, S* y, int64_t batch, int64_t T,
                  int64_t D, int64_t N) {
  const std::vector<S> A2 = transposed(A, D, N, S(kLog2E));
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    std::vector<S> h(N * D), dx(D);
    for (int64_t b = b0; b < b1; ++b)
      run_sequence(x + b * T * D, dl + b * T * D, A2.data(), B + b * T * N, C + b * T * N, T, D, N, h.data(),
                   dx.data(), y + b * T * D, static_cast<S*>(nullptr));
  });
}

// Reverse recurrence per sequence: g = ∂loss/∂h_t = C_t dy_t + a_{t+1} ⊙ g_{t+1}; the decays recomputed.
template <typename S>
void backward_impl(const S* dy, const S* x, const S* dl, const S* A, const S* B, const S* C, S* gx, S* gdl, S* gA,
                   S* gB, S* gC, int64_t batch, int64_t T, int64_t D, int64_t N) {
  const std::vector<S> A2 = transposed(A, D, N, S(kLog2E)), At = transposed(A, D, N, S(1));
  // ∂loss/∂A per sequence, (N, D) each, summed in a fixed order after: the same bits at any thread count
  std::vector<S> gA_parts(batch * N * D, S(0));
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    std::vector<S> h(N * D), dx(D), g(N * D), gdx(D), gdecay(D);
    std::unique_ptr<S[]> states(new S[T * N * D]);  // every entry written by run_sequence before it is read
    for (int64_t b = b0; b < b1; ++b) {
      S* gAt = gA_parts.data() + b * N * D;
      const S *xb = x + b * T * D, *db = dl + b * T * D, *dyb = dy + b * T * D, *Bb = B + b * T * N,
              *Cb = C + b * T * N;
      run_sequence(xb, db, A2.data(), Bb, Cb, T, D, N, h.data(), dx.data(), static_cast<S*>(nullptr), states.get());
      std::fill(g.begin(), g.end(), S(0));
      std::fill(h.begin(), h.end(), S(0));  // h_{−1} = 0: at t = 0 nothing flows to the decay's gradients
      for (int64_t t = T - 1; t >= 0; --t) {
        const S *delta = db + t * D, *xt = xb + t * D, *dyt = dyb + t * D;
        const S* ht = states.get() + t * N * D;
        const S* hp = t ? ht - N * D : h.data();
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) { dx[d] = delta[d] * xt[d]; gdx[d] = S(0); gdecay[d] = S(0); }
        for (int64_t n = 0; n < N; ++n) {
          const S bn = Bb[t * N + n], cn = Cb[t * N + n];
          const S *a2 = A2.data() + n * D, *an = At.data() + n * D;
          const S* htn = ht + n * D;
          S* gn = g.data() + n * D;
          S* gAn = gAt + n * D;
          S dB = 0, dC = 0;
          const S* hpn = hp + n * D;
#pragma omp simd reduction(+ : dB, dC)
          for (int64_t d = 0; d < D; ++d) {
            const S gv = gn[d] + dyt[d] * cn;  // ∂loss/∂h_t
            gdx[d] += bn * gv;
            dB += dx[d] * gv;
            dC += dyt[d] * htn[d];
            const S ga = gv * exp2_approx(delta[d] * a2[d]);  // ∂loss/∂h_{t−1}
            const S gla = ga * hpn[d];                       // ∂loss/∂(Δ_t A) at (d, n)
            gAn[d] += gla * delta[d];
            gdecay[d] += gla * an[d];
            gn[d] = ga;
          }
          gB[(b * T + t) * N + n] = dB;
          gC[(b * T + t) * N + n] = dC;
        }
        S *gxt = gx + (b * T + t) * D, *gdt = gdl + (b * T + t) * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) {
          gxt[d] = gdx[d] * delta[d];
          gdt[d] = gdx[d] * xt[d] + gdecay[d];
        }
      }
    }
  });
  std::vector<S> sum(N * D, S(0));
  for (int64_t b = 0; b < batch; ++b)  // in batch order, contiguous
    for (int64_t i = 0; i < N * D; ++i) sum[i] += gA_parts[b * N * D + i];
  for (int64_t d = 0; d < D; ++d)
    for (int64_t n = 0; n < N; ++n) gA[d * N + n] = sum[n * D + d];
}

void check(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
           const at::Tensor& C) {
  for (const at::Tensor* t : {&x, &delta, &A, &B, &C}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == x.scalar_type(),
                "selective scan kernel: CPU tensors, contiguous, of one dtype");
  }
  TORCH_CHECK(x.dim() == 3 && delta.sizes() == x.sizes() && A.dim() == 2 && A.size(0) == x.size(2) && B.dim() == 3 &&
                  B.size(0) == x.size(0) && B.size(1) == x.size(1) && B.size(2) == A.size(1) && C.sizes() == B.sizes(),
              "selective scan kernel: x, delta (batch, T, D); A (D, N); B, C (batch, T, N)");
}

}  // namespace

at::Tensor forward(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                   const at::Tensor& C) {
  check(x, delta, A, B, C);
  auto y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "selective_scan_forward", [&] {
    forward_impl<scalar_t>(x.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(),
                           B.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), x.size(0),
                           x.size(1), x.size(2), A.size(1));
  });
  return y;
}

std::vector<at::Tensor> backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& delta,
                                 const at::Tensor& A, const at::Tensor& B, const at::Tensor& C) {
  check(x, delta, A, B, C);
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.is_contiguous() && dy.scalar_type() == x.scalar_type(),
              "selective scan kernel: dy like x, contiguous");
  auto gx = at::empty_like(x), gdl = at::empty_like(delta), gA = at::empty_like(A), gB = at::empty_like(B),
       gC = at::empty_like(C);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "selective_scan_backward", [&] {
    backward_impl<scalar_t>(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(),
                            A.data_ptr<scalar_t>(), B.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(),
                            gx.data_ptr<scalar_t>(), gdl.data_ptr<scalar_t>(), gA.data_ptr<scalar_t>(),
                            gB.data_ptr<scalar_t>(), gC.data_ptr<scalar_t>(), x.size(0), x.size(1), x.size(2),
                            A.size(1));
  });
  return {gx, gdl, gA, gB, gC};
}

// The size of the thread team at::parallel_for runs here (1 without OpenMP: it is compiled from headers, serial
// unless built with -fopenmp; or a runtime other than torch's that ignores torch.set_num_threads).
int64_t parallel_threads() {
  std::atomic<int64_t> most{1};
  at::parallel_for(0, 1024, 1, [&](int64_t, int64_t) {
#ifdef _OPENMP
    const int64_t team = omp_get_num_threads();
#else
    const int64_t team = 1;
#endif
    int64_t seen = most.load();
    while (team > seen && !most.compare_exchange_weak(seen, team)) {
    }
  });
  return most.load();
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("parallel_threads", &parallel_threads, "threads at::parallel_for runs on here");
  m.def("forward", &forward, "selective scan forward: y (batch, T, D)");
  m.def("backward", &backward, "selective scan backward: grads of x, delta, A, B, C");
}
