// The no-grad ordered scan's steps on an x86-64 CPU with AVX2 + FMA: the fast path of reference/ordered_scan.py
// when dt is shared by the directions (reference/_cpu_kernels.py builds and calls it; docs/design.md section 3.5).
// Per row s (a direction, or a reset segment of one), batch row b, step t, state n, channel d:
//
//     tok = idx[t, s]                           the natural token row s reads at step t
//     a   = 2^(dt[b, tok, d] * A2[s, n, d])     A2 = A log2(e); 2^x: the polynomial of _scan_seq.exp2
//     h   = a * h + (dt * x)[b, tok, d] * B[b, boff[s] + tok, n]         h = 0 before step 0
//     y   = sum_n C[b, coff[s] + tok, n] * h  +  Dsk[s, d] * x[b, tok, d]
//     out[target[t, s], b, d] += y              the group sums, time-major (G*L, Bsz, D)
//
// Layout: channels innermost, 8 per vector (the last vector masked when D is not a multiple of 8), the state of
// a (row, batch row, vector) in registers for up to 8 states at a time, blocks of TB steps outermost so that a
// block's gathered rows stay in cache across the vectors. Each thread owns a fixed set of (batch row, vector)
// pairs for the whole call, so no two threads touch the same output element: no atomics, and the sums are
// added in the same order (rows in order s = 0, 1, ...) whatever the thread count.
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#include <type_traits>

namespace {

constexpr int64_t TB = 64;  // steps per block

inline __m256 poly(__m256 r) {  // 2^r on [-1/2, 1/2]: the reference's coefficients (Horner)
    __m256 p = _mm256_set1_ps(COEF6);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(COEF5));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(COEF4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(COEF3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(COEF2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(COEF1));
    return _mm256_fmadd_ps(p, r, _mm256_set1_ps(COEF0));
}

// reference/_scan_seq.py: exp2, step for step (its Horner steps as fused multiply-adds here, so the last bit may
// differ). x clamped to [-151, 128] (max/min return their second operand when the first is NaN: NaN is kept),
// n = round(x), 2^(x - n) by the polynomial, times 2^n built as two powers of two 2^half 2^(n - half), so that a
// subnormal result rounds once.
inline __m256 exp2_small(__m256 x) {
    x = _mm256_min_ps(_mm256_set1_ps(128.f), _mm256_max_ps(_mm256_set1_ps(-151.f), x));
    const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 p = poly(_mm256_sub_ps(x, n));
    const __m256i ni = _mm256_cvtps_epi32(n);
    const __m256i half = _mm256_srai_epi32(ni, 1);
    const __m256i e1 = _mm256_slli_epi32(_mm256_add_epi32(half, _mm256_set1_epi32(127)), 23);
    const __m256i e2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, half), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e1)), _mm256_castsi256_ps(e2));
}

// The same bits as exp2_small, 8 % faster on the base GSM scan where every lane has n >= -125 (a decay above 2^-125):
// p 2^n is normal then (p in [0.7, 1.42]; at n = 128 only p <= 1 occurs, inf for p = 1), so the scaling by 2^n is
// exact and is the sum of n and p's exponent field. The lower clamp matters only below -125 (the other branch).
// NaN: n is NaN, not below -125; its conversion (INT_MIN) shifts out to 0 and p, NaN, stays NaN.
inline __m256 exp2_poly(__m256 x) {
    const __m256 xc = _mm256_min_ps(_mm256_set1_ps(128.f), x);
    const __m256 n = _mm256_round_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    if (_mm256_movemask_ps(_mm256_cmp_ps(n, _mm256_set1_ps(-125.f), _CMP_LT_OQ))) return exp2_small(x);
    const __m256 p = poly(_mm256_sub_ps(xc, n));
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23)));
}

// Loads and stores of 8 channels, masked only for the last vector of a row (masked stores are slow on some CPUs).
template <bool FULL>
inline __m256 load8(const float* p, __m256i mask) {
    return FULL ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, mask);
}

template <bool FULL>
inline void store8(float* p, __m256i mask, __m256 v) {
    if (FULL) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, mask, v);
}

inline __m256i tail_mask(int64_t left) {  // lanes [0, left) set
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(left)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// p[0 : min(left, 8)] += v (masked only when fewer than 8 channels are left).
inline void add8(float* p, int64_t left, __m256 v) {
    if (left >= 8) {
        _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), v));
    } else {
        const __m256i mk = tail_mask(left);
        _mm256_maskstore_ps(p, mk, _mm256_add_ps(_mm256_maskload_ps(p, mk), v));
    }
}

// f(full, c0, mask) for the vectors of n channels: whole ones (full: std::true_type), then the masked last one.
template <class F>
inline void over_vectors(int64_t n, F f) {
    int64_t c0 = 0;
    for (; c0 + 8 <= n; c0 += 8) f(std::true_type{}, c0, tail_mask(8));
    if (c0 < n) f(std::false_type{}, c0, tail_mask(n - c0));
}

struct Args {
    const float *x, *dt, *B, *C, *A2, *Dsk;
    const int64_t *idx, *boff, *coff, *target;
    float* out;
    int64_t Bsz, L, S, steps, N, D, b_rows, c_rows;
};

// One (row s, batch row b, channel vector at d0) over the steps [t0, t1), states [n0, n0 + NH): h (NH x 8 floats,
// the state in and out), ys (the block's y, set by the first chunk of states, added to by the others).
template <int NH, bool FULL>
inline void chunk(const Args& a, int64_t s, int64_t b, int64_t d0, __m256i mask, int64_t t0, int64_t t1, int64_t n0,
                  float* h, __m256* ys) {
    __m256 hs[NH], as[NH];
    for (int k = 0; k < NH; ++k) {
        hs[k] = _mm256_loadu_ps(h + 8 * k);
        as[k] = load8<FULL>(a.A2 + (s * a.N + n0 + k) * a.D + d0, mask);
    }
    const float* xb = a.x + b * a.L * a.D + d0;
    const float* db = a.dt + b * a.L * a.D + d0;
    const float* Bb = a.B + (b * a.b_rows + a.boff[s]) * a.N + n0;
    const float* Cb = a.C + (b * a.c_rows + a.coff[s]) * a.N + n0;
    const __m256 dsk = a.Dsk ? load8<FULL>(a.Dsk + s * a.D + d0, mask) : _mm256_setzero_ps();
    for (int64_t t = t0; t < t1; ++t) {
        const int64_t tok = a.idx[t * a.S + s];
        const __m256 d = load8<FULL>(db + tok * a.D, mask);
        const __m256 u = load8<FULL>(xb + tok * a.D, mask);
        const __m256 du = _mm256_mul_ps(d, u);
        const float* bn = Bb + tok * a.N;
        const float* cn = Cb + tok * a.N;
        __m256 acc = n0 ? ys[t - t0] : (a.Dsk ? _mm256_mul_ps(dsk, u) : _mm256_setzero_ps());
        for (int k = 0; k < NH; ++k) {
            const __m256 decay = exp2_poly(_mm256_mul_ps(d, as[k]));
            hs[k] = _mm256_fmadd_ps(decay, hs[k], _mm256_mul_ps(du, _mm256_set1_ps(bn[k])));
            acc = _mm256_fmadd_ps(hs[k], _mm256_set1_ps(cn[k]), acc);
        }
        ys[t - t0] = acc;
    }
    for (int k = 0; k < NH; ++k) _mm256_storeu_ps(h + 8 * k, hs[k]);
}

typedef void (*ChunkFn)(const Args&, int64_t, int64_t, int64_t, __m256i, int64_t, int64_t, int64_t, float*, __m256*);
const ChunkFn CHUNKS[2][9] = {  // [full vector][states in the chunk]
    {nullptr, chunk<1, false>, chunk<2, false>, chunk<3, false>, chunk<4, false>, chunk<5, false>, chunk<6, false>,
     chunk<7, false>, chunk<8, false>},
    {nullptr, chunk<1, true>, chunk<2, true>, chunk<3, true>, chunk<4, true>, chunk<5, true>, chunk<6, true>,
     chunk<7, true>, chunk<8, true>}};

}  // namespace

// Returns 0, or -1 when the scratch state could not be allocated (nothing written then).
extern "C" int glsm_gathered_scan(const float* x, const float* dt, const float* B, int64_t b_rows, const float* C,
                                  int64_t c_rows, const int64_t* idx, const int64_t* boff, const int64_t* coff,
                                  const float* A2, const float* Dsk, const int64_t* target, float* out, int64_t Bsz,
                                  int64_t L, int64_t S, int64_t steps, int64_t N, int64_t D, int64_t threads) {
    const Args a{x, dt, B, C, A2, Dsk, idx, boff, coff, target, out, Bsz, L, S, steps, N, D, b_rows, c_rows};
    const int64_t vecs = (D + 7) / 8, items = Bsz * vecs, nchunks = (N + 7) / 8;
    // the state of every (row, item, chunk of states): 8 x 8 floats each, zero before the first step
    float* state = static_cast<float*>(calloc(static_cast<size_t>(S * items * nchunks) * 64, sizeof(float)));
    if (!state) return -1;
    if (threads < 1) threads = 1;
    if (threads > items) threads = items;
    #pragma omp parallel num_threads(threads)
    {
        const int64_t nt = omp_get_num_threads(), me = omp_get_thread_num();
        const int64_t i0 = items * me / nt, i1 = items * (me + 1) / nt;
        __m256 ys[TB];
        for (int64_t t0 = 0; t0 < steps; t0 += TB) {
            const int64_t t1 = t0 + TB < steps ? t0 + TB : steps;
            for (int64_t s = 0; s < S; ++s) {
                for (int64_t it = i0; it < i1; ++it) {
                    const int64_t b = it / vecs, d0 = (it % vecs) * 8;
                    const bool full = D - d0 >= 8;
                    const __m256i mask = tail_mask(D - d0);
                    for (int64_t c = 0; c < nchunks; ++c) {
                        const int64_t n0 = 8 * c, nh = N - n0 < 8 ? N - n0 : 8;
                        float* h = state + ((s * items + it) * nchunks + c) * 64;
                        CHUNKS[full][nh](a, s, b, d0, mask, t0, t1, n0, h, ys);
                    }
                    for (int64_t t = t0; t < t1; ++t) add8(out + (target[t * S + s] * Bsz + b) * D + d0, D - d0, ys[t - t0]);
                }
            }
        }
    }
    free(state);
    return 0;
}

// ------------------------------------------------------------------------------------------ deformable aggregation
// The no-grad fast path of reference/deformable.py: deformable_aggregate, in its order of operations. Per batch
// row b, token l = (t, h, w), offset group g, tap p = (dt, dh, dw):
//
//     hh = (h + dh) + off_h,  ww = (w + dw) + off_w,  h0 = floor(hh), lh = hh - h0 (w likewise)
//     corner (ch, cw) in {0, 1}^2 at (h0 + ch, w0 + cw): read row (clamp(t + dt) H + idx(h0 + ch)) W + idx(w0 + cw)
//       (idx: clamped into the frame, NaN to 0) with coefficient
//       ((lin_h ok_h) (lin_w ok_w)) (t_ok mask),  lin = 1 - lh or lh,  ok: inside the frame (0 or 1)
//     out[b, l, g's channels] = sum_p weight[p] * sum_k coef_k x[b, row_k, g's channels]
//
// An outside corner reads its clamped row times 0, so a NaN or inf there reaches the output as in the oracle.
// Threads split the tokens; each token's row of out is written by one thread. out is written, not added to.
namespace {

inline void axis(float pos, int64_t size, int64_t* idx, float* lin) {
    const float p0 = floorf(pos), frac = pos - p0;
    const float pc[2] = {p0, p0 + 1.f}, l[2] = {1.f - frac, frac};
    for (int k = 0; k < 2; ++k) {
        const float c = pc[k];
        idx[k] = c != c ? 0 : static_cast<int64_t>(c < 0.f ? 0.f : (c > size - 1 ? static_cast<float>(size - 1) : c));
        lin[k] = l[k] * static_cast<float>(c >= 0.f && c <= static_cast<float>(size - 1));
    }
}

// One vector of 8 channels (from c0) of one tap's sample: sum_k coef_k x[row_k] (the four corners in order).
template <bool FULL>
inline __m256 corner_sum(const float* x, const int64_t* rows, const float* coef, int64_t c0, __m256i mk) {
    __m256 v = _mm256_mul_ps(_mm256_set1_ps(coef[0]), load8<FULL>(x + rows[0] + c0, mk));
    for (int k = 1; k < 4; ++k) v = _mm256_fmadd_ps(_mm256_set1_ps(coef[k]), load8<FULL>(x + rows[k] + c0, mk), v);
    return v;
}

// One vector of 8 channels (from c0) of one (token, group): sum_p weight[p] * sum_k coef_k x[row_k].
template <bool FULL>
inline void sample8(const float* x, const int64_t* rows, const float* coef, const float* weight, int64_t C, int64_t P,
                    int64_t c0, float* dst, __m256i mk) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t p = 0; p < P; ++p) {
        const __m256 v = corner_sum<FULL>(x, rows + 4 * p, coef + 4 * p, c0, mk);
        const __m256 wp = load8<FULL>(weight + p * C + c0, mk);
        acc = p ? _mm256_fmadd_ps(v, wp, acc) : _mm256_mul_ps(v, wp);
    }
    store8<FULL>(dst + c0, mk, acc);
}

// The four corners of every tap of token bl = (b; t, h, w) in offset group g: rows[4p + k] the offset in x (batch
// stride xs) of corner k's first channel of the group, coef[4p + k] its coefficient (k = 2 ch + cw).
inline void corners(const float* off, const float* mask, const int64_t* taps, int64_t bl, int64_t b, int64_t t,
                    int64_t h, int64_t w, int64_t g, int64_t Goff, int64_t P, int64_t T, int64_t H, int64_t W,
                    int64_t C, int64_t xs, int64_t cpg, int64_t* rows, float* coef) {
    for (int64_t p = 0; p < P; ++p) {
        const int64_t tt = t + taps[3 * p];
        const float t_ok = static_cast<float>(tt >= 0 && tt < T);
        const int64_t frame = tt < 0 ? 0 : (tt > T - 1 ? T - 1 : tt);
        const float* o = off + ((bl * Goff + g) * P + p) * 2;
        const float m = t_ok * mask[(bl * Goff + g) * P + p];
        int64_t ih[2], iw[2];
        float wh[2], wv[2];
        axis(static_cast<float>(h + taps[3 * p + 1]) + o[0], H, ih, wh);
        axis(static_cast<float>(w + taps[3 * p + 2]) + o[1], W, iw, wv);
        for (int ch = 0; ch < 2; ++ch) {
            for (int cw = 0; cw < 2; ++cw) {
                rows[4 * p + 2 * ch + cw] = b * xs + ((frame * H + ih[ch]) * W + iw[cw]) * C + g * cpg;
                coef[4 * p + 2 * ch + cw] = wh[ch] * wv[cw] * m;
            }
        }
    }
}

// body(bl, b, l, t, h, w, rows, coef, scratch) for every token bl = (b; l = (t, h, w)) of a (Bsz, T, H, W) clip,
// the tokens split over the threads; each thread has its own rows and coef (4 per tap, for corners()) and `extra`
// floats of scratch. Returns 0, or -1 when those could not be allocated (nothing run then).
template <class Body>
int over_tokens(int64_t Bsz, int64_t T, int64_t H, int64_t W, int64_t P, int64_t extra, int64_t threads, Body body) {
    const int64_t L = T * H * W, tokens = Bsz * L;
    if (threads < 1) threads = 1;
    int64_t* rows_all = static_cast<int64_t*>(malloc(sizeof(int64_t) * 4 * P * threads));
    float* coef_all = static_cast<float*>(malloc(sizeof(float) * 4 * P * threads));
    float* extra_all = static_cast<float*>(malloc(sizeof(float) * (extra > 0 ? extra : 1) * threads));
    int rc = -1;
    if (rows_all && coef_all && extra_all) {
        rc = 0;
        #pragma omp parallel num_threads(threads)
        {
            const int64_t me = omp_get_thread_num();
            int64_t* rows = rows_all + 4 * P * me;
            float* coef = coef_all + 4 * P * me;
            float* scratch = extra_all + extra * me;
            #pragma omp for schedule(static)
            for (int64_t bl = 0; bl < tokens; ++bl) {
                const int64_t b = bl / L, l = bl % L;
                body(bl, b, l, l / (H * W), (l / W) % H, l % W, rows, coef, scratch);
            }
        }
    }
    free(rows_all);
    free(coef_all);
    free(extra_all);
    return rc;
}

}  // namespace

extern "C" int glsm_deformable(const float* x, const float* off, const float* mask, const float* weight,
                               const int64_t* taps, float* out, int64_t Bsz, int64_t T, int64_t H, int64_t W,
                               int64_t Goff, int64_t P, int64_t C, int64_t threads) {
    const int64_t L = T * H * W, cpg = C / Goff;
    return over_tokens(Bsz, T, H, W, P, 0, threads,
                       [&](int64_t bl, int64_t b, int64_t, int64_t t, int64_t h, int64_t w, int64_t* rows, float* coef,
                           float*) {
        for (int64_t g = 0; g < Goff; ++g) {
            corners(off, mask, taps, bl, b, t, h, w, g, Goff, P, T, H, W, C, L * C, cpg, rows, coef);
            float* dst = out + bl * C + g * cpg;
            over_vectors(cpg, [&](auto full, int64_t c0, __m256i mk) {
                sample8<decltype(full)::value>(x, rows, coef, weight + g * cpg, C, P, c0, dst, mk);
            });
        }
    });
}

// ------------------------------------------------------------------------ grouped deformable convolution (no grad)
// out += sum_p W_p sample_p(y): the grouped form of the STMM modulation (a grouped, modulated deformable convolution,
// DCNv2-style) in one pass per token. sample_p is deformable_aggregate's sample of tap p with unit weight (the
// positions, corners and coefficients above); W (P, Gw, I, Opad): tap p's weights of channel group g, input i, output
// o (Opad = O rounded up to 8, zero padded), I = O = C / Gw. Per token the P samples of all C channels are formed in
// a thread-local buffer, then each group's outputs are sum_{p, i} sample_p[g I + i] W[p, g, i, :] (the taps in
// order, the inputs in order), added to out. Threads split the tokens; y and out are (Bsz, L, C) with batch strides
// ys and os (rows contiguous).
namespace {

// Accumulators for NB vectors of outputs (8 each) of one group: acc = sum_{p, i} s_p[i] W[p, i, ob*8 : (ob+NB)*8].
template <int NB>
inline void mix(const float* s, int64_t C, int64_t P, int64_t cg, const float* w, int64_t wp_stride, int64_t opad,
                int64_t ob, float* dst, int64_t O) {
    __m256 acc[NB];
    for (int j = 0; j < NB; ++j) acc[j] = _mm256_setzero_ps();
    for (int64_t p = 0; p < P; ++p) {
        const float* sp = s + p * C;
        const float* wp = w + p * wp_stride + ob * 8;
        for (int64_t i = 0; i < cg; ++i) {
            const __m256 v = _mm256_set1_ps(sp[i]);
            for (int j = 0; j < NB; ++j) acc[j] = _mm256_fmadd_ps(v, _mm256_loadu_ps(wp + i * opad + 8 * j), acc[j]);
        }
    }
    for (int j = 0; j < NB; ++j) add8(dst + (ob + j) * 8, O - (ob + j) * 8, acc[j]);
}

typedef void (*MixFn)(const float*, int64_t, int64_t, int64_t, const float*, int64_t, int64_t, int64_t, float*,
                      int64_t);
const MixFn MIXES[9] = {nullptr, mix<1>, mix<2>, mix<3>, mix<4>, mix<5>, mix<6>, mix<7>, mix<8>};

}  // namespace

extern "C" int glsm_grouped_deformable_add(const float* y, int64_t ys, const float* off, const float* mask,
                                           const float* w, const int64_t* taps, float* out, int64_t os, int64_t Bsz,
                                           int64_t T, int64_t H, int64_t W, int64_t Goff, int64_t P, int64_t C,
                                           int64_t Gw, int64_t opad, int64_t threads) {
    const int64_t cpg = C / Goff, cg = C / Gw, nvec = opad / 8;
    return over_tokens(Bsz, T, H, W, P, P * C, threads,
                       [&](int64_t bl, int64_t b, int64_t l, int64_t t, int64_t h, int64_t wc, int64_t* rows,
                           float* coef, float* samp) {
        for (int64_t g = 0; g < Goff; ++g) {
            corners(off, mask, taps, bl, b, t, h, wc, g, Goff, P, T, H, W, C, ys, cpg, rows, coef);
            for (int64_t p = 0; p < P; ++p) {  // each tap's sample alone (unit tap weights)
                float* dst = samp + p * C + g * cpg;
                over_vectors(cpg, [&](auto full, int64_t c0, __m256i mk) {
                    constexpr bool F = decltype(full)::value;
                    store8<F>(dst + c0, mk, corner_sum<F>(y, rows + 4 * p, coef + 4 * p, c0, mk));
                });
            }
        }
        float* dst = out + b * os + l * C;
        for (int64_t gw = 0; gw < Gw; ++gw) {
            const float* wg = w + gw * cg * opad;
            for (int64_t ob = 0; ob < nvec; ob += 8) {
                const int64_t nb = nvec - ob < 8 ? nvec - ob : 8;
                MIXES[nb](samp + gw * cg, C, P, cg, wg, Gw * cg * opad, opad, ob, dst + gw * cg, cg);
            }
        }
    });
}
