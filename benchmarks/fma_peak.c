// The CPU's own fp32 ceiling, for the "% of peak" figures of benchmarks/RESULTS.md section 1:
// the core clock (a chain of dependent one-cycle integer adds on one thread) and the FMA-only
// rate (AVX2 + FMA: 12 independent 8-lane accumulators per thread, 1 and then every thread).
// x86-64 with AVX2 and FMA only. Build and run (no Python, no project code):
//     gcc -O2 -mavx2 -mfma -fopenmp benchmarks/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak
// Theoretical peak = cores x clock x FMA pipes x 8 lanes x 2 (Zen 3: 2 pipes, 32 FLOP/cycle).
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static float fma_loop(long n) {
  __m256 a[12]; __m256 x = _mm256_set1_ps(1.0000001f), y = _mm256_set1_ps(0.9999999f);
  for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps((float)i);
  for (long k = 0; k < n; k++) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], x, y);
  }
  __m256 s = a[0]; for (int i = 1; i < 12; i++) s = _mm256_add_ps(s, a[i]);
  float out[8]; _mm256_storeu_ps(out, s); return out[0];
}
static long add_chain(long n) {
  long v = 0;
  for (long k = 0; k < n; k++) {
    __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(v));
  }
  return v;
}
int main(void) {
  long n = 200000000L;
  for (int rep = 0; rep < 3; rep++) {
    double t = now(); long v = add_chain(n); double dt = now() - t;
    printf("clock (1 thread, dependent adds): %.2f GHz (%ld)\n", 10.0 * n / dt / 1e9, v);
  }
  for (int threads = 1; threads <= omp_get_num_procs(); threads++) {
    for (int rep = 0; rep < 3; rep++) {
      long m = 100000000L; float sink = 0; double t = now();
#pragma omp parallel num_threads(threads) reduction(+:sink)
      sink += fma_loop(m);
      double dt = now() - t;
      printf("fp32 FMA peak, %d thread(s): %.1f GFLOP/s (%g)\n", threads, threads * m * 12.0 * 8 * 2 / dt / 1e9, sink);
    }
  }
  return 0;
}
