/* One decode step of multi-head attention on a CPU, fp32: one query per row and head over a cache.
 *
 * Built and loaded by engine/kernels.py (plain C, no torch headers: compiles in well under a second). torch's
 * SDPA kernel is written for blocks of queries; with one query per head it spends most of its time on per-(row,
 * head) setup and on waiting for the cache to stream in (README, "Where the time goes"). Here the cache is
 * position-major, so that one step reads it as one contiguous stream: the threads split the positions, each keeps
 * a running max, sum and weighted value sum per (row, head) for its share (flash-decoding), and the shares are
 * merged at the end.
 *
 * Layouts (element offsets):
 *   q            (b, h, d) at b*q_stride + h*D + d, unscaled
 *   new_k, new_v (b, h, d) at b*q_stride + h*D + d, or NULL: written into the caches at position T-1 first
 *   kc, vc       (t, b, h, d) at t*c_t + b*c_b + h*D + d, positions 0..T-1 attended
 *   mask         (b, t) at b*T + t, additive, or NULL
 *   out          (b, h, d) at (b*H + h)*D + d
 * Returns 0, or 1 when out of memory (out is then untouched).
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

int decode_attention(const float *q, const float *new_k, const float *new_v, int64_t q_stride,
                     float *kc, float *vc, int64_t c_t, int64_t c_b, const float *mask, float *out,
                     int64_t B, int64_t H, int64_t T, int64_t D, float scale, int threads) {
    const int64_t N = B * H, HD = H * D;
    if (threads < 1) threads = 1;
    if (threads > T) threads = (int)T;
    float *s = malloc(sizeof(float) * T * N);                     /* scores, (t, b*H + h) */
    float *part = malloc(sizeof(float) * threads * N * (D + 2)); /* per thread: max (N), sum (N), out (N*D) */
    float *qs = malloc(sizeof(float) * N * D);                    /* scaled queries, (b*H + h, d) */
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
#pragma omp parallel num_threads(threads)
    {
        int j = 0, n = 1;
#ifdef _OPENMP
        j = omp_get_thread_num();
        n = omp_get_num_threads();
#endif
        const int64_t t0 = T * j / n, t1 = T * (j + 1) / n;
        float *mx = part + (int64_t)j * N * (D + 2), *sm = mx + N, *o = sm + N;
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
        /* this thread's positions: scores and their max above; now exp(score - max) and weighted values */
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
#pragma omp barrier
        /* merge the threads' shares: rescale each to the overall max */
#pragma omp for schedule(static)
        for (int64_t i = 0; i < N; i++) {
            float m = -INFINITY;
            for (int k = 0; k < n; k++) { const float v = part[(int64_t)k * N * (D + 2) + i]; m = v > m ? v : m; }
            float total = 0.f, acc[D];
            for (int64_t d = 0; d < D; d++) acc[d] = 0.f;
            for (int k = 0; k < n; k++) {
                const float *pk = part + (int64_t)k * N * (D + 2);
                if (pk[i] == -INFINITY) continue; /* a thread with no positions */
                const float c = expf(pk[i] - m);
                total += c * pk[N + i];
                const float *ok = pk + 2 * N + i * D;
                for (int64_t d = 0; d < D; d++) acc[d] += c * ok[d];
            }
            const float inv = 1.f / total;
            for (int64_t d = 0; d < D; d++) out[i * D + d] = acc[d] * inv;
        }
    }
    free(s); free(part); free(qs);
    return 0;
}
