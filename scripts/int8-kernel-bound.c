/* What bounds the int8 trace's inner loop (src/model/quant.rs, x86::layer_avx2)?
 * The same loop over one 2 x 512 layer's W_hh (1 MiB of int8 in the kernel's
 * layout: 64 blocks of 8 units, 128 column groups, 4 gates, 32 bytes), timed whole
 * and with parts taken out:
 *   full       vpsignb + vpmaddubsw + vpmaddwd + vpaddd per 32 weights (the kernel)
 *   no sign    without vpsignb (wrong sums: the cost of the sign trick)
 *   no madd    vpmaddubsw summed in i16 (wrong sums: the cost of widening)
 *   sign only  vpsignb + vpaddd (no multiplies)
 *   loads+add  the weights loaded and added, nothing else: the bytes' own cost
 * COPIES matrices are visited in turn, so that COPIES x 1 MiB sets which cache
 * they come from (1: mostly L2/L3, 8: L3, like the trace).
 *   gcc -O3 -mavx2 -mfma scripts/int8-kernel-bound.c -o /tmp/int8-bound && /tmp/int8-bound 8
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define H 512
#define G (H / 4)

static int8_t *W;
static int8_t X[H] __attribute__((aligned(32)));
static int32_t out[4 * H];

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static inline __m256i step(int variant, __m256i acc, __m256i w, __m256i xv, __m256i xa) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i ws = variant == 1 ? w : _mm256_sign_epi8(w, xv);
  switch (variant) {
  case 2: return _mm256_add_epi32(acc, w);
  case 3: return _mm256_add_epi16(acc, _mm256_maddubs_epi16(xa, ws));
  case 4: return _mm256_add_epi32(acc, ws);
  default: return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(xa, ws), ones));
  }
}

static inline __attribute__((always_inline)) void layer(int variant) {
  for (int b = 0; b < H / 8; b++) {
    const int8_t *p = W + (size_t)b * G * 4 * 32;
    __m256i e[4], o[4];
    for (int q = 0; q < 4; q++) e[q] = o[q] = _mm256_setzero_si256();
    for (int g = 0; g < G; g += 2) {
      __m256i xv0 = _mm256_set1_epi32(((const int *)X)[g]), xa0 = _mm256_abs_epi8(xv0);
      __m256i xv1 = _mm256_set1_epi32(((const int *)X)[g + 1]), xa1 = _mm256_abs_epi8(xv1);
      for (int q = 0; q < 4; q++) e[q] = step(variant, e[q], _mm256_load_si256((const __m256i *)(p + q * 32)), xv0, xa0);
      for (int q = 0; q < 4; q++) o[q] = step(variant, o[q], _mm256_load_si256((const __m256i *)(p + 128 + q * 32)), xv1, xa1);
      p += 256;
    }
    for (int q = 0; q < 4; q++) _mm256_storeu_si256((__m256i *)(out + q * H + b * 8), _mm256_add_epi32(e[q], o[q]));
  }
}

__attribute__((noinline)) static void v0(void) { layer(0); }
__attribute__((noinline)) static void v1(void) { layer(1); }
__attribute__((noinline)) static void v2(void) { layer(2); }
__attribute__((noinline)) static void v3(void) { layer(3); }
__attribute__((noinline)) static void v4(void) { layer(4); }

int main(int argc, char **argv) {
  int copies = argc > 1 ? atoi(argv[1]) : 8;
  size_t bytes = (size_t)4 * H * H;
  int8_t *base = aligned_alloc(64, bytes * copies);
  for (size_t i = 0; i < bytes * copies; i++) base[i] = (int8_t)(rand() % 255 - 127);
  for (int i = 0; i < H; i++) X[i] = (int8_t)(rand() % 255 - 127);
  void (*fns[])(void) = {v0, v1, v3, v4, v2};
  const char *names[] = {"full", "no sign", "no madd", "sign only", "loads+add"};
  printf("%d x 1 MiB of int8 W_hh (H = %d), one layer-step = 1M multiply-adds\n", copies, H);
  for (int v = 0; v < 5; v++) {
    int reps = 20000;
    double t0 = now();
    for (int r = 0; r < reps; r++) {
      W = base + (size_t)(r % copies) * bytes;
      fns[v]();
    }
    double dt = (now() - t0) / reps;
    printf("  %-10s %5.1f us per layer-step, weights at %5.1f GB/s\n", names[v], dt * 1e6, bytes / dt / 1e9);
  }
  return out[0] == 12345;
}
