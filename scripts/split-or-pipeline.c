/* Issue 10, item 1: two cores on one exact 2 x H trace, which way wins?
 *   pipeline  core 0 runs layer 0, core 1 runs layer 1 (a block behind): each
 *             streams its own layer's W_hh, 16*H*H bytes, and the two meet once
 *             per block of steps (cellscope's way, src/model/lstm.rs);
 *   split     both cores run every layer, each on half of its units (half of
 *             W_hh each), meeting at a barrier after every layer-step, since the
 *             next step needs all of h;
 *   split in layer-major blocks: as split, but layer 0 runs a block of steps,
 *             then layer 1 the same block, one barrier per step.
 * Only the weight streaming and the meetings are timed: per step and core, a
 * matrix-vector product in the kernel's layout (8 units x 4 gates per block, one
 * broadcast of h per column, FMAs) over the core's share of W_hh.
 *   gcc -O3 -mavx2 -mfma -pthread scripts/split-or-pipeline.c -o /tmp/split && /tmp/split 512
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static int H, STEPS = 4000;
static float *W[2];           /* W_hh of each layer, packed: blocks of 8 units, column, gate, lane */
static float *h[2];           /* h of each layer, H floats */
static atomic_int arrived;    /* split: barrier count */
static atomic_int generation; /* split: barrier phase */

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Units [u0, u1) of one layer-step: gates = W_hh h, then a stand-in for the cell
 * update (h = tanh-free squash) so the next step depends on this one. */
static void layer_step(const float *w, const float *x, float *out, int u0, int u1) {
  for (int b = u0 / 8; b < u1 / 8; b++) {
    const float *p = w + (size_t)b * H * 32;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    __m256 acc2[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int c = 0; c < H; c += 2) {
      __m256 x0 = _mm256_set1_ps(x[c]), x1 = _mm256_set1_ps(x[c + 1]);
      for (int q = 0; q < 4; q++) acc[q] = _mm256_fmadd_ps(_mm256_load_ps(p + q * 8), x0, acc[q]);
      for (int q = 0; q < 4; q++) acc2[q] = _mm256_fmadd_ps(_mm256_load_ps(p + 32 + q * 8), x1, acc2[q]);
      p += 64;
    }
    __m256 s = _mm256_setzero_ps();
    for (int q = 0; q < 4; q++) s = _mm256_add_ps(s, _mm256_add_ps(acc[q], acc2[q]));
    s = _mm256_div_ps(s, _mm256_add_ps(_mm256_set1_ps(1.0f), _mm256_andnot_ps(_mm256_set1_ps(-0.0f), s)));
    _mm256_storeu_ps(out + b * 8, s);
  }
}

static void barrier(int threads) {
  int gen = atomic_load(&generation);
  if (atomic_fetch_add(&arrived, 1) == threads - 1) {
    atomic_store(&arrived, 0);
    atomic_fetch_add(&generation, 1);
  } else {
    while (atomic_load(&generation) == gen) _mm_pause();
  }
}

static atomic_int done0; /* pipeline: steps layer 0 has finished */
#define BLOCK 64

static void *pipeline(void *arg) {
  int core = (int)(long)arg;
  float *x = aligned_alloc(64, H * sizeof(float)), *y = aligned_alloc(64, H * sizeof(float));
  for (int i = 0; i < H; i++) x[i] = 0.1f;
  for (int t = 0; t < STEPS; t++) {
    if (core == 1 && t % BLOCK == 0)
      while (atomic_load(&done0) < t + BLOCK && atomic_load(&done0) < STEPS) _mm_pause();
    layer_step(W[core], x, y, 0, H);
    float *z = x; x = y; y = z;
    if (core == 0 && (t + 1) % BLOCK == 0) atomic_store(&done0, t + 1);
  }
  if (core == 0) atomic_store(&done0, STEPS);
  h[core][0] = x[0];
  return NULL;
}

static void *split(void *arg) {
  int core = (int)(long)arg, half = H / 2;
  for (int t = 0; t < STEPS; t++) {
    for (int k = 0; k < 2; k++) {
      /* Layer k reads its own h (all units, written by both cores) and writes its half. */
      static float next[2][4096] __attribute__((aligned(64)));
      layer_step(W[k], h[k], next[k], core * half, (core + 1) * half);
      barrier(2);
      if (core == 0)
        for (int i = 0; i < H; i++) h[k][i] = next[k][i];
      barrier(2);
    }
  }
  return NULL;
}

/* Split, layer-major: both cores run layer 0 over a block of steps (each on its
 * half of the units, one barrier per step: h is double-buffered), then layer 1
 * over the same block. A core then touches only half of one layer's W_hh for
 * BLOCK steps in a row, which stays in its L2 where that half fits. */
static void *split_blocks(void *arg) {
  int core = (int)(long)arg, half = H / 2;
  static float hb[2][2][4096] __attribute__((aligned(64)));
  for (int t0 = 0; t0 < STEPS; t0 += BLOCK)
    for (int k = 0; k < 2; k++)
      for (int t = t0; t < t0 + BLOCK && t < STEPS; t++) {
        layer_step(W[k], hb[k][t % 2], hb[k][(t + 1) % 2], core * half, (core + 1) * half);
        barrier(2);
      }
  return NULL;
}

static double run(void *(*f)(void *)) {
  pthread_t th[2];
  atomic_store(&done0, 0);
  double t0 = now();
  for (long c = 0; c < 2; c++) pthread_create(&th[c], NULL, f, (void *)c);
  for (int c = 0; c < 2; c++) pthread_join(th[c], NULL);
  return STEPS / (now() - t0);
}

int main(int argc, char **argv) {
  H = argc > 1 ? atoi(argv[1]) : 512;
  for (int k = 0; k < 2; k++) {
    W[k] = aligned_alloc(64, (size_t)4 * H * H * sizeof(float));
    for (size_t i = 0; i < (size_t)4 * H * H; i++) W[k][i] = (float)((i * 2654435761u) % 1000) * 1e-5f - 0.005f;
    h[k] = aligned_alloc(64, H * sizeof(float));
    for (int i = 0; i < H; i++) h[k][i] = 0.1f;
  }
  printf("2 x %d, %d steps, weights only (%.0f MiB of f32 W_hh per layer)\n", H, STEPS, 16.0 * H * H / 1048576);
  for (int r = 0; r < 3; r++)
    printf("  pipeline %7.0f steps/s   split (barrier per layer-step) %7.0f   split in layer-major blocks %7.0f\n",
           run(pipeline), run(split), run(split_blocks));
  return 0;
}
