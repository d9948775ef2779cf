/*
 * data.c -- the dataset and the random numbers. Everything random in the program (weights and
 * samples) comes from a counter-based generator: a value is a hash of (seed, stream, index),
 * not the n-th draw of a sequential generator. So a rank that holds a shard of a weight or a
 * slice of a batch makes exactly the values the single-process run has there, without making
 * the rest, and the loss curve does not depend on the layout.
 *
 * The dataset is C interleaved spiral arms in the plane: sample i picks an arm and a position
 * along it from the hash of i, plus a little noise. The classifier must learn to tell the arms
 * apart, which a linear model cannot do.
 */
#include <math.h>

#include "train.h"

/* splitmix64's finaliser: a bijective mix of 64 bits. */
static uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

float rng_uniform(uint64_t seed, uint64_t stream, uint64_t index) {
  uint64_t h = mix64(mix64(seed * 0x9e3779b97f4a7c15ull + stream) ^ (index + 1));
  return (float)(h >> 40) * (1.0f / 16777216.0f); /* 24 bits: exact in a float, < 1 */
}

/* Streams of the dataset, apart from the weight streams (small numbers, see model.c). */
enum { STREAM_ARM = 1000001, STREAM_POS, STREAM_NOISE_X, STREAM_NOISE_Y };

/* Standard deviation of the noise added to each coordinate: enough that the arms overlap a
 * little near the centre, so the loss settles above zero instead of chasing it. */
#define NOISE 0.08f

/* Roughly normal noise with standard deviation 1: the sum of 4 uniforms, centred. */
static float noise(uint64_t seed, uint64_t stream, uint64_t i) {
  float s = 0.0f;
  for (uint64_t k = 0; k < 4; k++) s += rng_uniform(seed, stream, 4 * i + k);
  return (s - 2.0f) * 1.7320508f; /* var of the sum is 4/12 */
}

void data_fill(uint64_t seed, int classes, uint64_t first, int n, float *x, int *labels) {
  const float two_pi = 6.2831853f;
  for (int j = 0; j < n; j++) {
    uint64_t i = first + (uint64_t)j;
    int arm = (int)(rng_uniform(seed, STREAM_ARM, i) * (float)classes);
    if (arm >= classes) arm = classes - 1;
    float t = rng_uniform(seed, STREAM_POS, i); /* position along the arm, 0..1 */
    float r = 0.15f + 0.85f * t;                /* radius grows along the arm */
    float angle = two_pi * (float)arm / (float)classes + 3.5f * t; /* just over half a turn */
    x[2 * j + 0] = r * cosf(angle) + NOISE * noise(seed, STREAM_NOISE_X, i);
    x[2 * j + 1] = r * sinf(angle) + NOISE * noise(seed, STREAM_NOISE_Y, i);
    labels[j] = arm;
  }
}
