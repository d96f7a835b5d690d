// A measurement prototype, not a backend: the no-grad ordered scan's steps hand-written for x86-64 AVX2 + FMA, to
// measure what a CPU kernel would gain over the reference's Inductor-compiled gathered steps (issue 14). Built and
// run only by bench/bench_cpu_scan_simd.py, which holds its output to the reference's on the same data.
//
// The same work as reference/ordered_scan.py: gathered_steps for one batch row with dt, B and C shared by the
// directions: row r reads natural token idx[t, r] at step t; a = 2^(dt A2) (the reference's polynomial exp2),
// h = a h + dt u B, y = C . h + Dsk u. Channels innermost: 8 channels per vector, 8 states per register pass, blocks
// of 64 tokens outermost (a block's gathered rows stay in cache across the channel vectors).
//   x, dt: (L, D); Bn, Cn: (L, N); idx: (L, R) int64; A2: (N, D); Dsk: (R, D) or null;
//   h: (R, N, D) state, in and out; y: (L, R, D) out. D and N multiples of 8.
// Built with -DGLSM_NO_EXP the decay is dt * A2 itself (wrong values): the cost of everything but the exponential.
#include <immintrin.h>
#include <stdint.h>

static inline __m256 exp2_poly(__m256 x) {
#ifdef GLSM_NO_EXP
    return x;
#else
    // reference/_scan_seq.py: exp2 (max/min return their second operand for a NaN first one: NaN is kept)
    x = _mm256_min_ps(_mm256_set1_ps(128.f), _mm256_max_ps(_mm256_set1_ps(-151.f), x));
    __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_sub_ps(x, n);
    __m256 p = _mm256_set1_ps(COEF6);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(COEF5));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(COEF4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(COEF3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(COEF2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(COEF1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(COEF0));
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i half = _mm256_srai_epi32(ni, 1);
    __m256i e1 = _mm256_slli_epi32(_mm256_add_epi32(half, _mm256_set1_epi32(127)), 23);
    __m256i e2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, half), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e1)), _mm256_castsi256_ps(e2));
#endif
}

extern "C" void gathered_steps(const float* x, const float* dt, const float* Bn, const float* Cn, const int64_t* idx,
                               const float* A2, const float* Dsk, float* h, float* y, int64_t L, int64_t R,
                               int64_t N, int64_t D, int64_t threads) {
    const int64_t NH = 8, TB = 64;
    #pragma omp parallel num_threads(threads)
    for (int64_t b0 = 0; b0 < L; b0 += TB) {
        const int64_t b1 = b0 + TB < L ? b0 + TB : L;
        #pragma omp for collapse(2) schedule(static)
        for (int64_t r = 0; r < R; ++r) {
            for (int64_t dv = 0; dv < D; dv += 8) {
                for (int64_t n0 = 0; n0 < N; n0 += NH) {
                    __m256 hs[NH], as[NH];
                    for (int64_t k = 0; k < NH; ++k) {
                        hs[k] = _mm256_loadu_ps(h + (r * N + n0 + k) * D + dv);
                        as[k] = _mm256_loadu_ps(A2 + (n0 + k) * D + dv);
                    }
                    for (int64_t t = b0; t < b1; ++t) {
                        const int64_t tok = idx[t * R + r];
                        const __m256 d = _mm256_loadu_ps(dt + tok * D + dv);
                        const __m256 u = _mm256_loadu_ps(x + tok * D + dv);
                        const __m256 du = _mm256_mul_ps(d, u);
                        const float* b = Bn + tok * N + n0;
                        const float* c = Cn + tok * N + n0;
                        float* yt = y + (t * R + r) * D + dv;
                        __m256 acc = n0 ? _mm256_loadu_ps(yt)
                                        : (Dsk ? _mm256_mul_ps(_mm256_loadu_ps(Dsk + r * D + dv), u) : _mm256_setzero_ps());
                        for (int64_t k = 0; k < NH; ++k) {
                            const __m256 a = exp2_poly(_mm256_mul_ps(d, as[k]));
                            hs[k] = _mm256_fmadd_ps(a, hs[k], _mm256_mul_ps(du, _mm256_set1_ps(b[k])));
                            acc = _mm256_fmadd_ps(hs[k], _mm256_set1_ps(c[k]), acc);
                        }
                        _mm256_storeu_ps(yt, acc);
                    }
                    for (int64_t k = 0; k < NH; ++k) _mm256_storeu_ps(h + (r * N + n0 + k) * D + dv, hs[k]);
                }
            }
        }
    }
}
