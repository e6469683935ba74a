/* CPU kernels for decoding, fp32 arithmetic: built and loaded by engine/kernels.py (plain C, no torch headers;
 * compiles in a few seconds with -march=native and OpenMP, which shares the runtime torch has loaded). Each
 * returns 0, or non-zero where it does not handle the case, and then has written nothing to its output: the caller
 * uses torch. Why they exist: README, "Where the time goes"; `python -m bench.decode_kernels` A/Bs each against
 * torch.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Floats ahead of the row being read that are requested early: 8 KB, about 15 % faster at 8-16 rows here than
 * the hardware prefetcher alone (a microbenchmark outside the repo). One line (16 floats) per request. */
#define PREFETCH_AHEAD 2048
/* Position shares of one step, merged in order: a fixed count, so that the result does not depend on the number
 * of threads (or on concurrent requests): the same seed gives the same clips however the machine is loaded. */
#define SHARES 8

/* One decode step of multi-head attention: one query per row and head over a KV cache.
 *
 * torch's SDPA kernel is written for blocks of queries; with one query per head it spends most of its time on
 * per-(row, head) setup and on waiting for the cache to stream in. Here the cache is position-major, so that one
 * step reads it as one contiguous stream: the positions are cut into SHARES consecutive shares, split between the
 * threads; each share keeps a max, sum and weighted value sum per (row, head) (flash-decoding), and the shares are
 * merged in order at the end.
 *
 * Layouts (element offsets):
 *   q            (b, h, d) at b*q_stride + h*D + d, unscaled
 *   new_k, new_v (b, h, d) at b*q_stride + h*D + d, or NULL: written into the caches at position T-1 first
 *   kc, vc       (t, b, h, d) at t*c_t + b*c_b + h*D + d, positions 0..T-1 attended
 *   mask         (b, t) at b*T + t, additive, or NULL
 *   out          (b, h, d) at (b*H + h)*D + d
 * Returns 1 when out of memory.
 */
int decode_attention(const float *q, const float *new_k, const float *new_v, int64_t q_stride,
                     float *kc, float *vc, int64_t c_t, int64_t c_b, const float *mask, float *out,
                     int64_t B, int64_t H, int64_t T, int64_t D, float scale, int threads) {
    const int64_t N = B * H, HD = H * D, P = T < SHARES ? T : SHARES;
    float *s = malloc(sizeof(float) * T * N);               /* scores, (t, b*H + h) */
    float *part = malloc(sizeof(float) * P * N * (D + 2)); /* per share: max (N), sum (N), out (N*D) */
    float *qs = malloc(sizeof(float) * N * D);              /* scaled queries, (b*H + h, d) */
    if (!s || !part || !qs) {
        free(s); free(part); free(qs);
        return 1;
    }
    for (int64_t b = 0; b < B; b++) {
        for (int64_t j = 0; j < HD; j++) qs[b * HD + j] = q[b * q_stride + j] * scale;
        if (new_k) {
            memcpy(kc + (T - 1) * c_t + b * c_b, new_k + b * q_stride, HD * sizeof(float));
            memcpy(vc + (T - 1) * c_t + b * c_b, new_v + b * q_stride, HD * sizeof(float));
        }
    }
#pragma omp parallel num_threads(threads < 1 ? 1 : threads)
    {
#pragma omp for schedule(static)
        for (int64_t c = 0; c < P; c++) {
            const int64_t t0 = T * c / P, t1 = T * (c + 1) / P;
            float *mx = part + c * N * (D + 2), *sm = mx + N, *o = sm + N;
            for (int64_t i = 0; i < N; i++) { mx[i] = -INFINITY; sm[i] = 0.f; }
            for (int64_t i = 0; i < N * D; i++) o[i] = 0.f;
            for (int64_t t = t0; t < t1; t++) {
                const float *kt = kc + t * c_t;
                float *st = s + t * N;
                for (int64_t b = 0; b < B; b++) {
                    const float *kb = kt + b * c_b, *qb = qs + b * HD;
                    const float mb = mask ? mask[b * T + t] : 0.f;
                    for (int64_t l = 0; l < HD; l += 16) __builtin_prefetch(kb + PREFETCH_AHEAD + l);
                    for (int64_t h = 0; h < H; h++) {
                        float acc = 0.f;
                        for (int64_t d = 0; d < D; d++) acc += qb[h * D + d] * kb[h * D + d];
                        acc += mb;
                        st[b * H + h] = acc;
                        if (acc > mx[b * H + h]) mx[b * H + h] = acc;
                    }
                }
            }
            /* this share's scores and their max are above; now exp(score - max) and the weighted values */
            for (int64_t t = t0; t < t1; t++) {
                const float *vt = vc + t * c_t;
                float *st = s + t * N;
                for (int64_t b = 0; b < B; b++) {
                    const float *vb = vt + b * c_b;
                    for (int64_t l = 0; l < HD; l += 16) __builtin_prefetch(vb + PREFETCH_AHEAD + l);
                    for (int64_t h = 0; h < H; h++) {
                        const int64_t i = b * H + h;
                        const float w = expf(st[i] - mx[i]);
                        sm[i] += w;
                        float *oi = o + i * D;
                        for (int64_t d = 0; d < D; d++) oi[d] += w * vb[h * D + d];
                    }
                }
            }
        }
        /* merge the shares in order, each rescaled to the overall max */
#pragma omp for schedule(static)
        for (int64_t i = 0; i < N; i++) {
            float m = -INFINITY;
            for (int64_t c = 0; c < P; c++) { const float v = part[c * N * (D + 2) + i]; m = v > m ? v : m; }
            float total = 0.f, acc[D];
            for (int64_t d = 0; d < D; d++) acc[d] = 0.f;
            for (int64_t c = 0; c < P; c++) {
                const float *pc = part + c * N * (D + 2);
                const float f = expf(pc[i] - m);
                total += f * pc[N + i];
                const float *oc = pc + 2 * N + i * D;
                for (int64_t d = 0; d < D; d++) acc[d] += f * oc[d];
            }
            const float inv = 1.f / total;
            for (int64_t d = 0; d < D; d++) out[i * D + d] = acc[d] * inv;
        }
    }
    free(s); free(part); free(qs);
    return 0;
}

/* y (R, O) = x (R, I) · w (O, I)ᵀ for the few rows of a decode step (R up to ~48), weights streamed once.
 *
 * BLAS kernels are tuned for large R; with few rows they reach about half of the memory bandwidth on this
 * project's CPU (`python -m bench.matmul`). Here each thread takes blocks of 8 weight rows and, for every pair
 * of input rows, keeps 16 AVX-512 accumulators (2 rows × 8 outputs) along I, reduced at the end into the 16 outputs
 * with one transposing tree. The 8 weight rows stay in L1/L2 across the row pairs, so the weights are read from
 * memory once per call. x rows at stride x_stride (unit stride within a row), w and y contiguous. bf16 weights
 * are widened to fp32 in registers (exact), so they stream half the bytes and the arithmetic stays fp32.
 * int8 weights (w_kind INT8, one fp32 scale per output channel, as gpt-fast's weight-only int8) stream a quarter of
 * the bytes; converting each to fp32 made the kernel compute-bound (no faster than bf16 at one row), so they are
 * multiplied in integers instead (`int8_rows`): each x row is rounded to int16 with its own scale (max |x| / 32767,
 * an error below 2e-5 of the row's largest value), int8 × int16 products summed in int32 (AVX-512 VNNI's vpdpwssd,
 * else vpmaddwd), flushed to fp32 every INT_BLOCK inputs so that no int32 sum can overflow, and each output
 * multiplied by its row's and its channel's scale.
 * Returns 1 (nothing written) without AVX-512 or AVX2+FMA (the AVX2 variant below), where I % 16 (AVX2: I % 8; int8:
 * I % 32, AVX2 I % 16) or O % 8 is not 0, for int8 without scales, or when out of memory.
 */
enum { FP32 = 0, BF16 = 1, INT8 = 2 }; /* w_kind: how the weights are stored */
static const int64_t W_BYTES[3] __attribute__((unused)) = {4, 2, 1};
/* Inputs summed in int32 before a flush to fp32: each lane adds two products of at most 32767 · 127 per step of
 * 32 (AVX2: 16) inputs, so 2048 inputs stay below 2 · 128 · 4.2e6 ≈ 1.07e9 < 2³¹ with either width. */
#define INT_BLOCK 2048
/* The next 8 int8 weight rows (8·I contiguous bytes), requested while a step reads inputs i..i+step-1 of these: 8 ·
 * step bytes (AVX-512: 4 lines) per step, so the next block streams in one block ahead. Its rows are short (1 KB for I = 1024), too
 * short for the hardware prefetcher to ramp up in: without this, int8 weights came from memory at about half the
 * bandwidth fp32 reached. Reading past the matrix's end is harmless (a prefetch never faults). */
static inline __attribute__((always_inline)) void prefetch_next_block(const int8_t *next, int64_t i, int step) {
    const int8_t *at = next + i * 8;
    for (int line = 0; line < 8 * step; line += 64) __builtin_prefetch(at + line);
}

/* x (R, I) at stride x_stride -> int16 rows (R, I) and their scales (R): x ≈ xq · xs */
static __attribute__((unused)) void quantize_rows16(const float *x, int64_t x_stride, int64_t R, int64_t I, int16_t *xq, float *xs) {
    for (int64_t r = 0; r < R; r++) {
        const float *xr = x + r * x_stride;
        float m = 0.f;
        for (int64_t i = 0; i < I; i++) m = fabsf(xr[i]) > m ? fabsf(xr[i]) : m;
        xs[r] = m > 0.f ? m / 32767.f : 1.f;
        const float inv = 1.f / xs[r];
        for (int64_t i = 0; i < I; i++) xq[r * I + i] = (int16_t)lrintf(xr[i] * inv);
    }
}
#ifdef __AVX512F__
#include <immintrin.h>

/* 16 vectors -> one vector whose lane k is the sum of v[k]'s lanes: pairs within 128-bit lanes, then across */
static inline __m512 reduce16(const __m512 *v) {
    __m512 s[8], u[4], w[2];
    for (int k = 0; k < 8; k++)
        s[k] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * k], v[2 * k + 1]), _mm512_unpackhi_ps(v[2 * k], v[2 * k + 1]));
    for (int k = 0; k < 4; k++)
        u[k] = _mm512_add_ps(_mm512_shuffle_ps(s[2 * k], s[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(s[2 * k], s[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    for (int k = 0; k < 2; k++)
        w[k] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * k], u[2 * k + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(u[2 * k], u[2 * k + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/* Each row's 8 sums from a pair's accumulators (acc[0..7]: row a, acc[8..15]: row b), each row reduced on its own
 * and in the lanes row a uses, so that a row's result does not depend on its place in a pair or on whether it had one
 * (fused requests put a request's rows at other places than alone: engine/fused.py) */
static inline void reduce_rows(const __m512 *acc, __m256 *a, __m256 *b) {
    __m512 v[16];
    for (int k = 0; k < 8; k++) { v[k] = acc[k]; v[8 + k] = _mm512_setzero_ps(); }
    *a = _mm512_castps512_ps256(reduce16(v));
    for (int k = 0; k < 8; k++) v[k] = acc[8 + k];
    *b = _mm512_castps512_ps256(reduce16(v));
}

/* 16 weights at w as fp32: fp32 as is, bf16 (the top half of an fp32) widened exactly */
static inline __attribute__((always_inline)) __m512 load_w(const char *w, const int kind) {
    if (kind == FP32) return _mm512_loadu_ps(w);
    const __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)w));
    return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
}

static inline __attribute__((always_inline)) void linear_rows(const float *x, int64_t x_stride, const char *w,
                                                              float *y, int64_t R, int64_t I, int64_t O, int threads,
                                                              const int kind) {
    const int64_t w_item = W_BYTES[kind];
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t o = 0; o < O; o += 8) {
        const char *wo = w + o * I * w_item;
        for (int64_t r = 0; r < R; r += 2) {
            const float *x0 = x + r * x_stride, *x1 = x0 + x_stride;
            __m512 acc[16];
            for (int k = 0; k < 16; k++) acc[k] = _mm512_setzero_ps();
            if (r + 1 < R) {
                for (int64_t i = 0; i < I; i += 16) {
                    const __m512 a = _mm512_loadu_ps(x0 + i), b = _mm512_loadu_ps(x1 + i);
                    for (int j = 0; j < 8; j++) {
                        const __m512 ww = load_w(wo + (j * I + i) * w_item, kind);
                        acc[j] = _mm512_fmadd_ps(a, ww, acc[j]);
                        acc[8 + j] = _mm512_fmadd_ps(b, ww, acc[8 + j]);
                    }
                }
            } else { /* the last of an odd number of rows (a single take: every row): one FMA per weight vector */
                for (int64_t i = 0; i < I; i += 16) {
                    const __m512 a = _mm512_loadu_ps(x0 + i);
                    for (int j = 0; j < 8; j++) acc[j] = _mm512_fmadd_ps(a, load_w(wo + (j * I + i) * w_item, kind), acc[j]);
                }
            }
            __m256 sa, sb;
            reduce_rows(acc, &sa, &sb);
            _mm256_storeu_ps(y + r * O + o, sa);
            if (r + 1 < R) _mm256_storeu_ps(y + (r + 1) * O + o, sb);
        }
    }
}

static inline __attribute__((always_inline)) __m512i dot16(__m512i acc, __m512i a, __m512i b) {
#ifdef __AVX512VNNI__
    return _mm512_dpwssd_epi32(acc, a, b); /* 32 int16 products, pairs summed into 16 int32 lanes, added */
#else
    return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b));
#endif
}

/* int8 weights (O, I) against int16 rows xq (R, I): pairs of rows, 8 outputs at a time, 32 inputs per step */
static void int8_rows(const int16_t *xq, const float *xs, const int8_t *w, const float *scale, float *y, int64_t R,
                      int64_t I, int64_t O, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t o = 0; o < O; o += 8) {
        const int8_t *wo = w + o * I;
        const __m256 sc = _mm256_loadu_ps(scale + o);
        for (int64_t r = 0; r < R; r += 2) {
            const int pair = r + 1 < R;
            const int16_t *x0 = xq + r * I, *x1 = pair ? x0 + I : x0;
            __m512 acc[16];
            for (int k = 0; k < 16; k++) acc[k] = _mm512_setzero_ps();
            for (int64_t i0 = 0; i0 < I; i0 += INT_BLOCK) {
                const int64_t i1 = i0 + INT_BLOCK < I ? i0 + INT_BLOCK : I;
                __m512i sum[16];
                for (int k = 0; k < 16; k++) sum[k] = _mm512_setzero_si512();
                if (pair) {
                    for (int64_t i = i0; i < i1; i += 32) {
                        const __m512i a = _mm512_loadu_si512(x0 + i), b = _mm512_loadu_si512(x1 + i);
                        prefetch_next_block(wo + 8 * I, i, 32);
                        for (int j = 0; j < 8; j++) {
                            const __m512i ww = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(wo + j * I + i)));
                            sum[j] = dot16(sum[j], a, ww);
                            sum[8 + j] = dot16(sum[8 + j], b, ww);
                        }
                    }
                } else {
                    for (int64_t i = i0; i < i1; i += 32) {
                        const __m512i a = _mm512_loadu_si512(x0 + i);
                        prefetch_next_block(wo + 8 * I, i, 32);
                        for (int j = 0; j < 8; j++)
                            sum[j] = dot16(sum[j], a,
                                           _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(wo + j * I + i))));
                    }
                }
                for (int k = 0; k < 16; k++) acc[k] = _mm512_add_ps(acc[k], _mm512_cvtepi32_ps(sum[k]));
            }
            __m256 sa, sb;
            reduce_rows(acc, &sa, &sb);
            _mm256_storeu_ps(y + r * O + o, _mm256_mul_ps(sa, _mm256_mul_ps(sc, _mm256_set1_ps(xs[r]))));
            if (pair) _mm256_storeu_ps(y + (r + 1) * O + o, _mm256_mul_ps(sb, _mm256_mul_ps(sc, _mm256_set1_ps(xs[r + 1]))));
        }
    }
}

#define FLOAT_STEP 16 /* inputs per step of linear_rows (I must be a multiple) */
#define INT8_STEP 32  /* of int8_rows */
#elif defined(__AVX2__) && defined(__FMA__)
/* AVX2 + FMA (most x86-64 laptops and servers without AVX-512): 16 ymm registers, so each thread keeps 8
 * accumulators (1 input row × 8 outputs) plus the row and one weight vector; the 8 weight rows (8 · I floats) stay
 * in L1/L2 across the input rows, so the weights are still read from memory once per call. */
#include <immintrin.h>

/* 8 vectors -> one vector whose lane k is the sum of v[k]'s lanes: horizontal adds within 128-bit lanes, then the
 * two halves */
static inline __m256 reduce8(const __m256 *v) {
    const __m256 s0 = _mm256_hadd_ps(v[0], v[1]), s1 = _mm256_hadd_ps(v[2], v[3]);
    const __m256 s2 = _mm256_hadd_ps(v[4], v[5]), s3 = _mm256_hadd_ps(v[6], v[7]);
    const __m256 t0 = _mm256_hadd_ps(s0, s1), t1 = _mm256_hadd_ps(s2, s3);
    return _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20), _mm256_permute2f128_ps(t0, t1, 0x31));
}

static inline __attribute__((always_inline)) __m256 load_w8(const char *w, const int kind) {
    if (kind == FP32) return _mm256_loadu_ps((const float *)w);
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)w));
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
}

static inline __attribute__((always_inline)) void linear_rows(const float *x, int64_t x_stride, const char *w,
                                                              float *y, int64_t R, int64_t I, int64_t O, int threads,
                                                              const int kind) {
    const int64_t w_item = W_BYTES[kind];
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t o = 0; o < O; o += 8) {
        const char *wo = w + o * I * w_item;
        for (int64_t r = 0; r < R; r++) {
            const float *xr = x + r * x_stride;
            __m256 acc[8];
            for (int k = 0; k < 8; k++) acc[k] = _mm256_setzero_ps();
            for (int64_t i = 0; i < I; i += 8) {
                const __m256 a = _mm256_loadu_ps(xr + i);
                for (int j = 0; j < 8; j++)
                    acc[j] = _mm256_fmadd_ps(a, load_w8(wo + (j * I + i) * w_item, kind), acc[j]);
            }
            _mm256_storeu_ps(y + r * O + o, reduce8(acc));
        }
    }
}

/* int8 weights (O, I) against int16 rows xq (R, I): one row, 8 outputs at a time, 16 inputs per step (vpmaddwd) */
static void int8_rows(const int16_t *xq, const float *xs, const int8_t *w, const float *scale, float *y, int64_t R,
                      int64_t I, int64_t O, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t o = 0; o < O; o += 8) {
        const int8_t *wo = w + o * I;
        const __m256 sc = _mm256_loadu_ps(scale + o);
        for (int64_t r = 0; r < R; r++) {
            const int16_t *xr = xq + r * I;
            __m256 acc[8];
            for (int k = 0; k < 8; k++) acc[k] = _mm256_setzero_ps();
            for (int64_t i0 = 0; i0 < I; i0 += INT_BLOCK) {
                const int64_t i1 = i0 + INT_BLOCK < I ? i0 + INT_BLOCK : I;
                __m256i sum[8];
                for (int k = 0; k < 8; k++) sum[k] = _mm256_setzero_si256();
                for (int64_t i = i0; i < i1; i += 16) {
                    const __m256i a = _mm256_loadu_si256((const __m256i *)(xr + i));
                    prefetch_next_block(wo + 8 * I, i, 16);
                    for (int j = 0; j < 8; j++)
                        sum[j] = _mm256_add_epi32(sum[j], _mm256_madd_epi16(a, _mm256_cvtepi8_epi16(
                                     _mm_loadu_si128((const __m128i *)(wo + j * I + i)))));
                }
                for (int k = 0; k < 8; k++) acc[k] = _mm256_add_ps(acc[k], _mm256_cvtepi32_ps(sum[k]));
            }
            _mm256_storeu_ps(y + r * O + o, _mm256_mul_ps(reduce8(acc), _mm256_mul_ps(sc, _mm256_set1_ps(xs[r]))));
        }
    }
}

#define FLOAT_STEP 8
#define INT8_STEP 16
#endif

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
/* w_kind: FP32, BF16 (computed in fp32 against the fp32 x) or INT8 (in integers: `int8_rows`); scale: INT8's (O)
 * per-channel scales, else NULL. One dispatcher for both instruction sets: each block above defines linear_rows,
 * int8_rows and their steps. */
int few_row_linear(const float *x, int64_t x_stride, const void *w, int w_kind, const float *scale, float *y,
                   int64_t R, int64_t I, int64_t O, int threads) {
    if (O % 8 || w_kind < FP32 || w_kind > INT8) return 1;
    if (w_kind == INT8) {
        if (I % INT8_STEP || !scale) return 1;
        int16_t *xq = malloc(sizeof(int16_t) * R * I);
        float *xs = malloc(sizeof(float) * R);
        if (!xq || !xs) { free(xq); free(xs); return 1; }
        quantize_rows16(x, x_stride, R, I, xq, xs);
        int8_rows(xq, xs, w, scale, y, R, I, O, threads);
        free(xq); free(xs);
        return 0;
    }
    if (I % FLOAT_STEP) return 1;
    if (w_kind == BF16) linear_rows(x, x_stride, w, y, R, I, O, threads, BF16);
    else linear_rows(x, x_stride, w, y, R, I, O, threads, FP32);
    return 0;
}
#else
int few_row_linear(const float *x, int64_t x_stride, const void *w, int w_kind, const float *scale, float *y,
                   int64_t R, int64_t I, int64_t O, int threads) {
    (void)x; (void)x_stride; (void)w; (void)w_kind; (void)scale; (void)y; (void)R; (void)I; (void)O; (void)threads;
    return 1;
}
#endif

/* The vector width few_row_linear was built for: 512 (AVX-512), 256 (AVX2 + FMA), 0 (none: it always answers 1) */
int kernel_isa(void) {
#if defined(__AVX512F__)
    return 512;
#elif defined(__AVX2__) && defined(__FMA__)
    return 256;
#else
    return 0;
#endif
}
