/* Matrix products over GGUF block-quantized weights, for the engine's decode steps.
 *
 * y[r, n] = sum_k x[r, k] * w[n, k], where w is stored as llama.cpp stores it:
 *   Q4_1: blocks of 32 weights along k, w = d * q + m, q in 0..15 (16 bytes: byte j holds
 *         element j in its low nibble and element j + 16 in its high nibble);
 *   Q8_0: blocks of 32 weights along k, w = d * q, q a signed byte.
 * Scales d and minimums m are kept as float32 (their float16 values widened exactly), so a
 * dequantized weight is the same float32 number the engine's unpacked weights hold: d * q is
 * exact in float32 and one rounding follows for + m, with or without a fused multiply-add.
 *
 * Every (row, output) is one sum in a fixed order (16 lanes over the blocks, then a fixed
 * reduction), whatever the number of rows and threads: a row's result never depends on what
 * else is in the batch. Outputs are split over threads (OpenMP; the process's runtime is
 * PyTorch's own libgomp, loaded first under the same soname).
 *
 * AVX-512 only: without it this file builds a library whose csc_kernel_simd() returns 0, and
 * the engine keeps its float32 matmuls (a portable loop measured 2.7x slower than them).
 */
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#define CSC_AVX512 1
#else
#define CSC_AVX512 0
#endif

#define BLOCK 32
#define PREFETCH 8 /* rows of blocks ahead: measured best of 4, 8, 16 */
/* Bytes per block: GGUF's blocks with their float16 scales widened to float32 at load.
 *   Q4_1: float d, float m, 16 bytes of nibbles;  Q8_0: float d, 32 signed bytes. */
#define BYTES(KIND) ((KIND) == 4 ? 24 : 36)

int csc_kernel_simd(void) { return CSC_AVX512; }

#if CSC_AVX512
#define INLINE static inline __attribute__((always_inline))

/* The weights of one block as 2 x 16 floats. */
static const float IOTA[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

/* Q4_1: the 16 values a nibble can stand for (d * q + m) are computed once per block; the 32
 * weights are then two lookups (vpermps reads the low 4 bits of each index). */
INLINE void q4_1_block(const uint8_t *blk, __m512 *lo, __m512 *hi) {
    __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blk + 8)));
    __m512 table = _mm512_fmadd_ps(_mm512_set1_ps(*(const float *)blk), _mm512_loadu_ps(IOTA),
                                   _mm512_set1_ps(*(const float *)(blk + 4)));
    *lo = _mm512_permutexvar_ps(bytes, table);
    *hi = _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), table);
}

INLINE void q8_0_block(const uint8_t *blk, __m512 *lo, __m512 *hi) {
    __m512 vd = _mm512_set1_ps(*(const float *)blk);
    const int8_t *q = (const int8_t *)(blk + 4);
    *lo = _mm512_mul_ps(vd, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q))));
    *hi = _mm512_mul_ps(vd, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + 16)))));
}

/* A tile of TN outputs x TM rows. Each (row, output) is one accumulator: per block, the first
 * half then the second half of the block is fused-multiply-added into it; one fixed reduction
 * at the end. The same operations in the same order for every tile shape, so a row's result
 * does not depend on the tile (or batch) it was computed in. One function per (kind, TN, TM),
 * so the accumulators live in registers. */
#define DEFINE_TILE(KIND, TN, TM)                                                              \
    static void tile_##KIND##_##TN##_##TM(const float *x, int K, const uint8_t *q, int nb,    \
                                          int n0, float *y, int r0, int N) {                  \
        __m512 acc[TN][TM];                                                                    \
        _Pragma("GCC unroll 8") for (int t = 0; t < TN; t++)                                  \
            _Pragma("GCC unroll 8") for (int r = 0; r < TM; r++) acc[t][r] =                  \
                _mm512_setzero_ps();                                                           \
        for (int b = 0; b < nb; b++) {                                                         \
            const float *xb = x + (size_t)r0 * K + BLOCK * b;                                  \
            __m512 wlo[TN], whi[TN];                                                           \
            _Pragma("GCC unroll 8") for (int t = 0; t < TN; t++) {                            \
                const uint8_t *blk = q + ((size_t)(n0 + t) * nb + b) * BYTES(KIND);           \
                _mm_prefetch((const char *)blk + PREFETCH * nb * BYTES(KIND), _MM_HINT_T0);   \
                if (KIND == 4) q4_1_block(blk, &wlo[t], &whi[t]);                              \
                else q8_0_block(blk, &wlo[t], &whi[t]);                                        \
            }                                                                                  \
            _Pragma("GCC unroll 8") for (int r = 0; r < TM; r++) {                            \
                __m512 xlo = _mm512_loadu_ps(xb + (size_t)r * K);                              \
                __m512 xhi = _mm512_loadu_ps(xb + (size_t)r * K + 16);                         \
                _Pragma("GCC unroll 8") for (int t = 0; t < TN; t++) {                        \
                    acc[t][r] = _mm512_fmadd_ps(wlo[t], xlo, acc[t][r]);                       \
                    acc[t][r] = _mm512_fmadd_ps(whi[t], xhi, acc[t][r]);                       \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
        _Pragma("GCC unroll 8") for (int t = 0; t < TN; t++)                                  \
            _Pragma("GCC unroll 8") for (int r = 0; r < TM; r++)                              \
                y[(size_t)(r0 + r) * N + n0 + t] = _mm512_reduce_add_ps(acc[t][r]);            \
    }

#define TILE_CASE(KIND, TN, TM)                                                                \
    case TN * 16 + TM:                                                                         \
        tile_##KIND##_##TN##_##TM(x, K, q, nb, n0, y, r0, N);                                  \
        break;

#define ROWS_1_TO_8(M, KIND, TN) M(KIND, TN, 1) M(KIND, TN, 2) M(KIND, TN, 3) M(KIND, TN, 4) \
    M(KIND, TN, 5) M(KIND, TN, 6) M(KIND, TN, 7) M(KIND, TN, 8)
#define ROWS_1_TO_4(M, KIND, TN) M(KIND, TN, 1) M(KIND, TN, 2) M(KIND, TN, 3) M(KIND, TN, 4)

/* Up to 4 rows: tiles of 4 outputs (16 accumulators); more: 2 outputs x 8 rows; 1 output for
 * what is left of N. */
#define DEFINE_TILES(KIND)                                                                     \
    ROWS_1_TO_4(DEFINE_TILE, KIND, 4)                                                          \
    ROWS_1_TO_8(DEFINE_TILE, KIND, 2)                                                          \
    ROWS_1_TO_8(DEFINE_TILE, KIND, 1)                                                          \
    static void tiles_##KIND(const float *x, int M, int K, const uint8_t *q, int N, float *y,  \
                             int n0, int TN) {                                                 \
        const int nb = K / BLOCK;                                                              \
        for (int r0 = 0; r0 < M;) {                                                            \
            int step = M - r0 < 8 ? M - r0 : 8;                                                \
            switch (TN * 16 + step) {                                                          \
                ROWS_1_TO_4(TILE_CASE, KIND, 4)                                                \
                ROWS_1_TO_8(TILE_CASE, KIND, 2)                                                \
                ROWS_1_TO_8(TILE_CASE, KIND, 1)                                                \
            }                                                                                  \
            r0 += step;                                                                        \
        }                                                                                      \
    }

DEFINE_TILES(4)
DEFINE_TILES(8)

#if defined(__AVX512VNNI__)
void csc_matmul_i8(int kind, const float *x, int M, int K, const uint8_t *w, int N, float *y,
                   int threads);
#endif

/* kind 4: Q4_1 blocks; 8: Q8_0 blocks; 5 and 9: the same in the i8 layout with int8
 * activations (the last section; the Python side passes them only where the CPU has VNNI). */
static void matmul(int kind, const float *x, int M, int K, const uint8_t *q, int N, float *y,
                   int threads) {
#if defined(__AVX512VNNI__)
    if (kind == 5 || kind == 9) {
        csc_matmul_i8(kind, x, M, K, q, N, y, threads);
        return;
    }
#endif
    const int TN = M <= 4 ? 4 : 2;
    const int groups = N / TN;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int g = 0; g < groups; g++) {
        if (kind == 4) tiles_4(x, M, K, q, N, y, g * TN, TN);
        else tiles_8(x, M, K, q, N, y, g * TN, TN);
    }
    for (int n0 = groups * TN; n0 < N; n0++) {
        if (kind == 4) tiles_4(x, M, K, q, N, y, n0, 1);
        else tiles_8(x, M, K, q, N, y, n0, 1);
    }
}

/* x [M, K] float32, row-major; q: N rows of K/32 Q4_1 blocks (24 bytes each); y [M, N]. */
void csc_q4_1_matmul(const float *x, int M, int K, const uint8_t *q, int N, float *y,
                     int threads) {
    matmul(4, x, M, K, q, N, y, threads);
}

/* x [M, K] float32; q: N rows of K/32 Q8_0 blocks (36 bytes each); y [M, N]. */
void csc_q8_0_matmul(const float *x, int M, int K, const uint8_t *q, int N, float *y,
                     int threads) {
    matmul(8, x, M, K, q, N, y, threads);
}
#endif


/* ------------------------------------------------------------------ decode-step attention */
#if CSC_AVX512
#include <math.h>
#include <stdlib.h>

/* e^x, 16 at a time: Cephes' expf polynomial after x = n ln2 + r, about 1 ulp; x is clamped
 * to [-87, 88] (softmax after the max is taken off, and silu's e^-x). */
static inline __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

#define MAX_DIM 256  /* head dimension */

/* Rotary embeddings and the KV-cache append for the tokens of one decode step, and attention
 * for the rows that feed one token (rows feeding a run of forced tokens get their rotated
 * queries in qrot and are left to csc_prompt_attention, which reads each key once for a
 * tile of their queries).
 *
 * qkv [T, (H + 2 KV) * D]: the step's real tokens (one per row, or a row's run of forced
 * tokens), each with its batch row, its column in the cache buffers and its position. Keys and
 * values [R, KV, cap, D] get each token's (rotated) key and value at its column; then each
 * token attends to the columns up to its own whose mask [R, mask_width] entry is set. out
 * [T, H * D]; qrot [T, H * D] is scratch. A row's tokens are consecutive: group i is tokens
 * group_start[i] .. + group_count[i] - 1, in column order. D a multiple of 16. */
void csc_decode_attention(const float *qkv, int T, int H, int KV, int D, const int *rows,
                          const int *cols, const float *pos, const float *inv_freq,
                          float *kbuf, float *vbuf, int cap, const uint8_t *mask,
                          int mask_width, float scaling, const int *group_start,
                          const int *group_count, int groups, float *qrot, float *out,
                          int threads) {
    const int half = D / 2, stride = (H + 2 * KV) * D, G = H / KV, chunks = D / 16;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < T; t++) {
        float c[MAX_DIM / 2], s[MAX_DIM / 2];
        for (int i = 0; i < half; i++) {
            float f = pos[t] * inv_freq[i];
            c[i] = cosf(f);
            s[i] = sinf(f);
        }
        const float *x = qkv + (size_t)t * stride;
        for (int h = 0; h < H + KV; h++) { /* queries, then keys into the cache */
            const float *in = x + (size_t)h * D;
            float *dst = h < H ? qrot + ((size_t)t * H + h) * D
                               : kbuf + (((size_t)rows[t] * KV + (h - H)) * cap + cols[t]) * D;
            for (int i = 0; i < half; i++) {
                float a = in[i], b = in[i + half];
                dst[i] = a * c[i] - b * s[i];
                dst[i + half] = b * c[i] + a * s[i];
            }
        }
        for (int g = 0; g < KV; g++)
            memcpy(vbuf + (((size_t)rows[t] * KV + g) * cap + cols[t]) * D,
                   x + (size_t)(H + KV + g) * D, sizeof(float) * D);
    }
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int task = 0; task < groups * KV; task++) {
        /* One row's tokens (consecutive in qkv) against one key/value head: each readable
         * key is loaded once for all of them. */
        const int first = group_start[task / KV], count = group_count[task / KV];
        if (count > 1) continue; /* a run of forced tokens: csc_prompt_attention attends */
        const int g = task % KV, r = rows[first], last = cols[first + count - 1];
        const uint8_t *readable = mask + (size_t)r * mask_width;
        const float *keys = kbuf + ((size_t)r * KV + g) * cap * D;
        const float *values = vbuf + ((size_t)r * KV + g) * cap * D;
        const int width = last + 16, Q = count * G; /* queries: (token, head) pairs */
        float *score = malloc(sizeof(float) * (size_t)Q * width);
        int *index = malloc(sizeof(int) * (size_t)width);
        int n = 0;
        for (int j = 0; j <= last; j++)
            if (readable[j]) index[n++] = j;
        /* scores[query][k]; a token reads keys up to its own column only */
        for (int k = 0; k < n; k++) {
            const float *kv = keys + (size_t)index[k] * D;
            __m512 kc[MAX_DIM / 16];
            for (int ch = 0; ch < chunks; ch++) kc[ch] = _mm512_loadu_ps(kv + 16 * ch);
            for (int i = 0; i < count; i++) {
                if (index[k] > cols[first + i]) continue;
                for (int q = 0; q < G; q++) {
                    const float *qv = qrot + ((size_t)(first + i) * H + g * G + q) * D;
                    __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(qv), kc[0]);
                    for (int ch = 1; ch < chunks; ch++)
                        acc = _mm512_fmadd_ps(_mm512_loadu_ps(qv + 16 * ch), kc[ch], acc);
                    score[(size_t)(i * G + q) * width + k] = _mm512_reduce_add_ps(acc) * scaling;
                }
            }
        }
        for (int i = 0; i < count; i++) {
            int seen = 0; /* keys this token reads: a prefix of index[] */
            while (seen < n && index[seen] <= cols[first + i]) seen++;
            for (int q = 0; q < G; q++) {
                float *sc = score + (size_t)(i * G + q) * width;
                float best = -INFINITY;
                for (int k = 0; k < seen; k++) best = sc[k] > best ? sc[k] : best;
                __m512 total = _mm512_setzero_ps();
                int k = 0;
                for (; k + 16 <= seen; k += 16) {
                    __m512 p = exp16(_mm512_sub_ps(_mm512_loadu_ps(sc + k), _mm512_set1_ps(best)));
                    _mm512_storeu_ps(sc + k, p);
                    total = _mm512_add_ps(total, p);
                }
                if (k < seen) {
                    __mmask16 m = (__mmask16)((1u << (seen - k)) - 1);
                    __m512 p = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, sc + k),
                                                   _mm512_set1_ps(best)));
                    p = _mm512_maskz_mov_ps(m, p);
                    _mm512_mask_storeu_ps(sc + k, m, p);
                    total = _mm512_add_ps(total, p);
                }
                const float inv = 1.0f / _mm512_reduce_add_ps(total);
                __m512 acc[MAX_DIM / 16];
                for (int ch = 0; ch < chunks; ch++) acc[ch] = _mm512_setzero_ps();
                for (int kk = 0; kk < seen; kk++) {
                    const __m512 p = _mm512_set1_ps(sc[kk] * inv);
                    const float *vv = values + (size_t)index[kk] * D;
                    for (int ch = 0; ch < chunks; ch++)
                        acc[ch] = _mm512_fmadd_ps(p, _mm512_loadu_ps(vv + 16 * ch), acc[ch]);
                }
                float *o = out + (size_t)(first + i) * H * D + (size_t)(g * G + q) * D;
                for (int ch = 0; ch < chunks; ch++) _mm512_storeu_ps(o + 16 * ch, acc[ch]);
            }
        }
        free(score);
        free(index);
    }
}

/* ------------------------------------------------------------------ prompt attention
 * Attention for rows that feed several tokens (a prompt's new tokens), with int8 activations:
 * there a last-bit difference in a token's attention output becomes a whole quantisation step
 * in the next matrix product, so each query's result must not depend on which other queries
 * and keys were in the call (the prefix cache computes a prompt's tokens in other calls than a
 * fresh prefill does, and a batch pads rows). Each query is one lane of a 16-query tile: its
 * scores are sums over the head dimension in a fixed order (no horizontal reductions), its
 * softmax and its weighted sum of values run over the row's readable keys in column order,
 * and keys after its own column add exact zeros. So a query gets the same numbers in any
 * tile, alone or batched, whatever the thread count.
 *
 * q [T, H * D]: the step's real tokens (rotated queries), grouped by row as in
 * csc_decode_attention; their key and value columns are already in kbuf / vbuf [R, KV, cap,
 * D]. mask [R, mask_width]: readable columns. out [T, H * D]. */
void csc_prompt_attention(const float *q, int T, int H, int KV, int D, const int *rows,
                          const int *cols, const float *kbuf, const float *vbuf, int cap,
                          const uint8_t *mask, int mask_width, float scaling,
                          const int *group_start, const int *group_count, int groups,
                          float *out, int threads) {
    const int G = H / KV, chunks = D / 16;
    /* tasks: (row group, kv head, tile of 16 queries); queries of a task are (token, head)
     * pairs in token-major order */
    int tiles_max = 0;
    for (int i = 0; i < groups; i++) {
        const int t = (group_count[i] * G + 15) / 16;
        tiles_max = t > tiles_max ? t : tiles_max;
    }
    const int tasks = groups * KV * tiles_max;
    (void)T;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int task = 0; task < tasks; task++) {
        const int tile = task % tiles_max, g = (task / tiles_max) % KV;
        const int group = task / tiles_max / KV;
        const int first = group_start[group], count = group_count[group], Q = count * G;
        const int q0 = tile * 16;
        if (q0 >= Q) continue;
        const int lanes = Q - q0 < 16 ? Q - q0 : 16;
        const int r = rows[first];
        const uint8_t *readable = mask + (size_t)r * mask_width;
        const float *keys = kbuf + ((size_t)r * KV + g) * cap * D;
        const float *values = vbuf + ((size_t)r * KV + g) * cap * D;
        /* each lane's token column; the tile reads keys up to the last lane's column */
        float qt[MAX_DIM][16];
        int qcol[16];
        const float *qp[16];
        for (int l = 0; l < 16; l++) {
            const int query = q0 + (l < lanes ? l : lanes - 1);
            const int token = first + query / G, head = g * G + query % G;
            qcol[l] = l < lanes ? cols[token] : -1;
            qp[l] = q + ((size_t)token * H + head) * D;
        }
        for (int d = 0; d < D; d++)
            for (int l = 0; l < 16; l++) qt[d][l] = qp[l][d];
        int last = 0;
        for (int l = 0; l < lanes; l++) last = qcol[l] > last ? qcol[l] : last;
        int *index = malloc(sizeof(int) * (size_t)(last + 1));
        int n = 0;
        for (int j = 0; j <= last; j++)
            if (readable[j]) index[n++] = j;
        float *score = malloc(sizeof(float) * 16 * (size_t)(n > 0 ? n : 1));
        const __m512i colv = _mm512_loadu_si512((const void *)qcol);
        const __m512 ninf = _mm512_set1_ps(-INFINITY), scale = _mm512_set1_ps(scaling);
        __m512 best = ninf;
        for (int k0 = 0; k0 < n; k0 += 8) {
            /* 8 keys at a time: independent sums (each still over d = 0, 1, ... in order) */
            const int m = n - k0 < 8 ? n - k0 : 8;
            const float *kv[8];
            for (int i = 0; i < 8; i++) kv[i] = keys + (size_t)index[k0 + (i < m ? i : 0)] * D;
            __m512 s[8];
            const __m512 q0v = _mm512_loadu_ps(qt[0]);
            for (int i = 0; i < 8; i++) s[i] = _mm512_mul_ps(q0v, _mm512_set1_ps(kv[i][0]));
            for (int d = 1; d < D; d++) {
                const __m512 qd = _mm512_loadu_ps(qt[d]);
                for (int i = 0; i < 8; i++)
                    s[i] = _mm512_fmadd_ps(qd, _mm512_set1_ps(kv[i][d]), s[i]);
            }
            for (int i = 0; i < m; i++) {
                /* a lane reads this key only if it is not after the lane's own column */
                const __mmask16 ok = _mm512_cmp_epi32_mask(_mm512_set1_epi32(index[k0 + i]),
                                                           colv, _MM_CMPINT_LE);
                const __m512 v = _mm512_mask_blend_ps(ok, ninf, _mm512_mul_ps(s[i], scale));
                _mm512_storeu_ps(score + 16 * (size_t)(k0 + i), v);
                best = _mm512_max_ps(best, v);
            }
        }
        __m512 total = _mm512_setzero_ps();
        for (int k = 0; k < n; k++) {
            const __m512 s = _mm512_loadu_ps(score + 16 * (size_t)k);
            const __mmask16 ok = _mm512_cmp_ps_mask(s, ninf, _CMP_NEQ_OQ);
            const __m512 p = _mm512_maskz_mov_ps(ok, exp16(_mm512_sub_ps(s, best)));
            _mm512_storeu_ps(score + 16 * (size_t)k, p);
            total = _mm512_add_ps(total, p);
        }
        float inv[16];
        _mm512_storeu_ps(inv, _mm512_div_ps(_mm512_set1_ps(1.0f), total));
        for (int ch = 0; ch < chunks; ch++) {
            __m512 acc[16];
            for (int l = 0; l < 16; l++) acc[l] = _mm512_setzero_ps();
            for (int k = 0; k < n; k++) {
                const __m512 v = _mm512_loadu_ps(values + (size_t)index[k] * D + 16 * ch);
                const float *p = score + 16 * (size_t)k;
                for (int l = 0; l < 16; l++)
                    acc[l] = _mm512_fmadd_ps(_mm512_set1_ps(p[l]), v, acc[l]);
            }
            for (int l = 0; l < lanes; l++) {
                const int query = q0 + l;
                const int token = first + query / G, head = g * G + query % G;
                _mm512_storeu_ps(out + ((size_t)token * H + head) * D + 16 * ch,
                                 _mm512_mul_ps(acc[l], _mm512_set1_ps(inv[l])));
            }
        }
        free(score);
        free(index);
    }
}

/* ------------------------------------------------------------------ fused decode layer parts */
/* h = x / sqrt(mean(x^2) + eps) * w, one row: 16 lanes of squares, one fixed reduction. */
static void rmsnorm_row(const float *x, int K, const float *w, float eps, float *h) {
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < K; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        acc = _mm512_fmadd_ps(v, v, acc);
    }
    const float r = 1.0f / sqrtf(_mm512_reduce_add_ps(acc) / (float)K + eps);
    for (int i = 0; i < K; i += 16)
        _mm512_storeu_ps(h + i, _mm512_mul_ps(_mm512_loadu_ps(w + i),
                                              _mm512_mul_ps(_mm512_loadu_ps(x + i),
                                                            _mm512_set1_ps(r))));
}

/* y [M, N] = rmsnorm(x [M, K]) @ W.T (K a multiple of 16); h [M, K] is scratch. */
void csc_rmsnorm_matmul(const float *x, int M, int K, const float *w, float eps, int kind,
                        const uint8_t *q, int N, float *h, float *y, int threads) {
    for (int r = 0; r < M; r++) rmsnorm_row(x + (size_t)r * K, K, w, eps, h + (size_t)r * K);
    matmul(kind, h, M, K, q, N, y, threads);
}

/* x [M, N] += a [M, K] @ W.T; y [M, N] is scratch. */
void csc_matmul_add(const float *a, int M, int K, int kind, const uint8_t *q, int N, float *x,
                    float *y, int threads) {
    matmul(kind, a, M, K, q, N, y, threads);
    for (size_t i = 0; i < (size_t)M * N; i++) x[i] += y[i];
}

/* The MLP of a decode step, in place on the residual stream x [M, K]:
 * x += (silu(g) * u) @ Wdown.T with [g | u] = rmsnorm(x) @ Wgate_up.T (I outputs each).
 * Scratch: h [M, K], gu [M, 2 I], a [M, I], y [M, K]. */
void csc_decode_mlp(float *x, int M, int K, const float *w, float eps, int kind_gu,
                    const uint8_t *gate_up, int I, int kind_down, const uint8_t *down, float *h,
                    float *gu, float *a, float *y, int threads) {
    csc_rmsnorm_matmul(x, M, K, w, eps, kind_gu, gate_up, 2 * I, h, gu, threads);
    for (int r = 0; r < M; r++) {
        const float *g = gu + (size_t)r * 2 * I, *u = g + I;
        float *out = a + (size_t)r * I;
        for (int i = 0; i < I; i += 16) {
            __m512 gv = _mm512_loadu_ps(g + i);
            __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv)); /* e^-g */
            __m512 silu = _mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
            _mm512_storeu_ps(out + i, _mm512_mul_ps(silu, _mm512_loadu_ps(u + i)));
        }
    }
    csc_matmul_add(a, M, I, kind_down, down, K, x, y, threads);
}
#endif




/* ------------------------------------------------------------------ int8 activations
 * Prefill multiplies many tokens by every weight, so it is bound by arithmetic, not memory.
 * There (and in decode steps, so that a token's numbers never depend on which of the two
 * computed it) the matrices multiply as llama.cpp multiplies them: each token's activations
 * are quantised per block of 32 to signed bytes p with a float scale dx (llama.cpp's Q8_1),
 * and a block's 32 products are one exact integer sum (AVX-512 VNNI: 64 byte products per
 * instruction, 4x the float32 rate), scaled once per block:
 *
 *   Q4_1, w = dw q + mw (q 0..15):  sum_k w_k x_k ~ (dw dx) sum_k q_k p_k + mw (dx sum_k p_k)
 *   Q8_0, w = dw q (q -128..127):   (dw dx) (sum_k (q_k + 128) p_k - 128 sum_k p_k)
 *
 * (VNNI multiplies unsigned by signed bytes, hence q + 128 and its exact integer correction.)
 * Each (token, output) is the same sequence of operations whatever the number of tokens and
 * threads, so a token's result does not depend on the batch it is computed in.
 *
 * Weights in this section's layout ("i8 layout"): for each group of 16 outputs and each block
 * of 32 inputs, chunks of 64 bytes (output j's 4 bytes at 4j), then the 16 outputs' scales dw
 * and (Q4_1) minimums mw as float32:
 *   Q4_1 (kind 5): 4 chunks; chunk c byte i: low nibble = input 4c + i, high = 16 + 4c + i;
 *                  384 bytes per group and block.
 *   Q8_0 (kind 9): 8 chunks; chunk c byte i: q + 128 of input 4c + i; 576 bytes.
 * N a multiple of 16. */
#if CSC_AVX512 && defined(__AVX512VNNI__)
#define CSC_VNNI 1
#else
#define CSC_VNNI 0
#endif

int csc_kernel_vnni(void) { return CSC_VNNI; }

#define I8_BYTES(KIND) ((KIND) == 5 ? 384 : 576)
#define I8_SCALES(KIND) ((KIND) == 5 ? 256 : 512) /* offset of dw; mw follows (Q4_1) */

/* Kernel-layout blocks (kind 4: 24-byte Q4_1, kind 8: 36-byte Q8_0) -> the i8 layout. */
void csc_to_i8(int kind, const uint8_t *q, int N, int K, uint8_t *out) {
    const int nb = K / BLOCK, ik = kind == 4 ? 5 : 9;
    for (int g = 0; g < N / 16; g++)
        for (int b = 0; b < nb; b++) {
            uint8_t *dst = out + ((size_t)g * nb + b) * I8_BYTES(ik);
            float *d = (float *)(dst + I8_SCALES(ik));
            for (int j = 0; j < 16; j++) {
                const uint8_t *blk = q + ((size_t)(g * 16 + j) * nb + b) * BYTES(kind);
                memcpy(d + j, blk, 4);
                if (kind == 4) {
                    memcpy(d + 16 + j, blk + 4, 4);
                    for (int c = 0; c < 4; c++) /* GGUF byte e: input e (low), e + 16 (high) */
                        for (int i = 0; i < 4; i++) dst[c * 64 + j * 4 + i] = blk[8 + 4 * c + i];
                } else {
                    for (int c = 0; c < 8; c++)
                        for (int i = 0; i < 4; i++)
                            dst[c * 64 + j * 4 + i] = (uint8_t)(blk[4 + 4 * c + i] ^ 0x80);
                }
            }
        }
}

#if CSC_VNNI
/* One token's activations per block: p = round(x / dx), dx = max|x| / 127; psum = sum p and
 * s = dx * psum. */
static void quantize_row(const float *x, int K, int8_t *p, float *dx, float *s, int32_t *psum) {
    for (int b = 0; b < K / BLOCK; b++) {
        __m512 lo = _mm512_loadu_ps(x + BLOCK * b), hi = _mm512_loadu_ps(x + BLOCK * b + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
        const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        __m512i ilo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, _mm512_set1_ps(id)));
        __m512i ihi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, _mm512_set1_ps(id)));
        _mm_storeu_si128((__m128i *)(p + BLOCK * b), _mm512_cvtsepi32_epi8(ilo));
        _mm_storeu_si128((__m128i *)(p + BLOCK * b + 16), _mm512_cvtsepi32_epi8(ihi));
        dx[b] = amax / 127.0f;
        psum[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(ilo, ihi));
        s[b] = dx[b] * (float)psum[b];
    }
}

#define BCAST4(ptr) _mm512_set1_epi32(*(const int32_t *)(ptr))

/* TM tokens x 16 outputs (group g): per block, the VNNI products of each token into an
 * integer sum, then the block's scaling, in the same order for every tile. */
#define DEFINE_I8_TILE(KIND, TM)                                                               \
    static void i8_tile_##KIND##_##TM(const int8_t *p, const float *dx, const float *s,       \
                                      const int32_t *psum, int K, const uint8_t *w, int g,    \
                                      float *y, int r0, int N) {                              \
        const int nb = K / BLOCK;                                                              \
        const __m512i low = _mm512_set1_epi8(15);                                              \
        __m512 acc[TM];                                                                        \
        _Pragma("GCC unroll 16") for (int r = 0; r < TM; r++) acc[r] = _mm512_setzero_ps();   \
        const uint8_t *wg = w + (size_t)g * nb * I8_BYTES(KIND);                               \
        for (int b = 0; b < nb; b++) {                                                         \
            const uint8_t *blk = wg + (size_t)b * I8_BYTES(KIND);                              \
            __m512i sum[TM];                                                                   \
            _Pragma("GCC unroll 16") for (int r = 0; r < TM; r++) sum[r] = _mm512_setzero_si512(); \
            if (KIND == 5) {                                                                   \
                _Pragma("GCC unroll 4") for (int c = 0; c < 4; c++) {                         \
                    const __m512i raw = _mm512_loadu_si512((const void *)(blk + 64 * c));      \
                    const __m512i qlo = _mm512_and_si512(raw, low);                            \
                    const __m512i qhi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low);      \
                    _Pragma("GCC unroll 16") for (int r = 0; r < TM; r++) {                   \
                        const int8_t *pr = p + (size_t)(r0 + r) * K + BLOCK * b;               \
                        sum[r] = _mm512_dpbusd_epi32(sum[r], qlo, BCAST4(pr + 4 * c));         \
                        sum[r] = _mm512_dpbusd_epi32(sum[r], qhi, BCAST4(pr + 16 + 4 * c));    \
                    }                                                                          \
                }                                                                              \
            } else {                                                                           \
                _Pragma("GCC unroll 8") for (int c = 0; c < 8; c++) {                         \
                    const __m512i u = _mm512_loadu_si512((const void *)(blk + 64 * c));        \
                    _Pragma("GCC unroll 16") for (int r = 0; r < TM; r++) {                   \
                        const int8_t *pr = p + (size_t)(r0 + r) * K + BLOCK * b;               \
                        sum[r] = _mm512_dpbusd_epi32(sum[r], u, BCAST4(pr + 4 * c));           \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
            const __m512 dw = _mm512_loadu_ps((const float *)(blk + I8_SCALES(KIND)));         \
            _Pragma("GCC unroll 16") for (int r = 0; r < TM; r++) {                           \
                const size_t at = (size_t)(r0 + r) * nb + b;                                   \
                if (KIND == 9)                                                                 \
                    sum[r] = _mm512_sub_epi32(sum[r], _mm512_set1_epi32(128 * psum[at]));      \
                acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_set1_ps(dx[at])),            \
                                         _mm512_cvtepi32_ps(sum[r]), acc[r]);                  \
                if (KIND == 5)                                                                 \
                    acc[r] = _mm512_fmadd_ps(                                                  \
                        _mm512_loadu_ps((const float *)(blk + I8_SCALES(KIND) + 64)),          \
                        _mm512_set1_ps(s[at]), acc[r]);                                        \
            }                                                                                  \
        }                                                                                      \
        _Pragma("GCC unroll 16") for (int r = 0; r < TM; r++)                                 \
            _mm512_storeu_ps(y + (size_t)(r0 + r) * N + 16 * g, acc[r]);                      \
    }

#define I8_ROWS(M, KIND) M(KIND, 1) M(KIND, 2) M(KIND, 3) M(KIND, 4) M(KIND, 5) M(KIND, 6) \
    M(KIND, 7) M(KIND, 8)
I8_ROWS(DEFINE_I8_TILE, 5)
I8_ROWS(DEFINE_I8_TILE, 9)
#define I8_CASE(KIND, TM)                                                                      \
    case KIND * 16 + TM:                                                                       \
        i8_tile_##KIND##_##TM(p, dx, s, psum, K, w, g, y, r0, N);                              \
        break;

/* y [M, N] = x [M, K] @ W.T with W in the i8 layout (kind 5: Q4_1, 9: Q8_0); the activations
 * are quantised per block first. */
void csc_matmul_i8(int kind, const float *x, int M, int K, const uint8_t *w, int N, float *y,
                   int threads) {
    const int nb = K / BLOCK;
    int8_t *p = malloc((size_t)M * K);
    float *dx = malloc(sizeof(float) * 2 * (size_t)M * nb), *s = dx + (size_t)M * nb;
    int32_t *psum = malloc(sizeof(int32_t) * (size_t)M * nb);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int r = 0; r < M; r++)
        quantize_row(x + (size_t)r * K, K, p + (size_t)r * K, dx + (size_t)r * nb,
                     s + (size_t)r * nb, psum + (size_t)r * nb);
    const int groups = N / 16;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int g = 0; g < groups; g++)
        for (int r0 = 0; r0 < M;) {
            const int step = M - r0 < 8 ? M - r0 : 8;
            switch (kind * 16 + step) { I8_ROWS(I8_CASE, 5) I8_ROWS(I8_CASE, 9) }
            r0 += step;
        }
    free(p);
    free(dx);
    free(psum);
}
#endif
