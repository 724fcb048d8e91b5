// Element-wise kernels: embedding gather, SwiGLU, residual add. Every kernel is a grid-stride
// loop over the elements, so any launch size covers any tensor. Numerics follow engine/cpu:
// exp in double (as Go's math.Exp), decoded weights bit-identical to nvfp4.Matrix.DecodeRows.
#include "common.cuh"
#include <limits.h>

#define GRID_STRIDE(i, n) \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

// out[t, :] = table[ids[t], :] for a dense float32 table [V, D].
extern "C" __global__ void embedding_f32(float* out, const float* table, const int* ids, int T, int D) {
    GRID_STRIDE(i, (size_t)T * D) {
        size_t t = i / D, d = i % D;
        out[i] = table[(size_t)ids[t] * D + d];
    }
}

// out[t, :] = table[ids[t], :] for a bf16 table [V, D].
extern "C" __global__ void embedding_bf16(float* out, const uint16_t* table, const int* ids, int T, int D) {
    GRID_STRIDE(i, (size_t)T * D) {
        size_t t = i / D, d = i % D;
        out[i] = bf16_to_f32(table[(size_t)ids[t] * D + d]);
    }
}

// out[t, :] = decode(table row ids[t]) for an NVFP4 table: packed [V, D/2], scales [V, D/16],
// tensor scale g; each element E2M1[code] * (float(scale) * g) as nvfp4.Matrix.DecodeRows.
extern "C" __global__ void embedding_nvfp4(float* out, const uint8_t* packed, const uint8_t* scales, float g,
                                           const int* ids, int T, int D) {
    GRID_STRIDE(i, (size_t)T * D) {
        size_t t = i / D, d = i % D;
        size_t row = (size_t)ids[t];
        uint32_t code = (packed[row * (D / 2) + d / 2] >> (4 * (d & 1))) & 15u;
        float f = __fmul_rn(e4m3_to_f32(scales[row * (D / 16) + d / 16]), g);
        out[i] = __fmul_rn(e2m1_value(code), f);
    }
}

// out = silu(gate) * up = gate / (1 + exp(-gate)) * up. out may alias gate or up.
extern "C" __global__ void swiglu_f32(float* out, const float* gate, const float* up, size_t n) {
    pdl_wait();
    pdl_trigger();
    GRID_STRIDE(i, n) {
        float x = gate[i];
        float e = (float)exp(-(double)x);
        out[i] = __fmul_rn(__fdiv_rn(x, __fadd_rn(1.0f, e)), up[i]);
    }
}

// dst += src.
extern "C" __global__ void add_f32(float* dst, const float* src, size_t n) {
    GRID_STRIDE(i, n) { dst[i] += src[i]; }
}

// argmax_rows_f32: ids[r] = index of the first largest value of row r of x [rows, n], NaN
// ignored, 0 for an all-NaN row (backend.ArgMax). grid (rows, P), block 256: block (r, p) scans
// elements [p·chunk, (p+1)·chunk) of row r, each thread its strided elements in increasing order
// keeping the first best, the block then the larger value or on a tie the smaller index. With
// P > 1 the blocks leave their (value, index) in pv/pi[r·P + p] and the last of row r to arrive
// (counters[r], left at zero) picks among them the same way — the result is the first largest
// whatever the order of arrival. One block per row (the first version) scanned a 151936-entry
// vocabulary row in ~60 µs from one SM.
__device__ __forceinline__ void argmax_pick(float& v, int& i, float v2, int i2) {
    if (i2 == INT_MAX) return;
    if (i == INT_MAX || v2 > v || (v2 == v && i2 < i)) v = v2, i = i2;
}
__device__ __forceinline__ void argmax_warp(float& v, int& best) {
    for (int o = 16; o > 0; o >>= 1) argmax_pick(v, best, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, best, o));
}
extern "C" __global__ void __launch_bounds__(256)
argmax_rows_f32(int* ids, float* pv, int* pi, int* counters, const float* x, int n, int chunk) {
    __shared__ float sv[32];
    __shared__ int si[32];
    __shared__ int last;
    const int r = blockIdx.x, p = blockIdx.y, P = gridDim.y;
    const float* row = x + (size_t)r * n;
    const int j1 = min(n, (p + 1) * chunk);
    float v = -INFINITY;
    int best = INT_MAX;
    for (int j = p * chunk + threadIdx.x; j < j1; j += blockDim.x) {
        const float e = row[j];
        if (!isnan(e) && (best == INT_MAX || e > v)) v = e, best = j;
    }
    argmax_warp(v, best);
    if ((threadIdx.x & 31) == 0) sv[threadIdx.x >> 5] = v, si[threadIdx.x >> 5] = best;
    __syncthreads();
    if (threadIdx.x < 32) {
        v = threadIdx.x < (blockDim.x >> 5) ? sv[threadIdx.x] : -INFINITY;
        best = threadIdx.x < (blockDim.x >> 5) ? si[threadIdx.x] : INT_MAX;
        argmax_warp(v, best);
    }
    if (P == 1) {
        if (threadIdx.x == 0) ids[r] = best == INT_MAX ? 0 : best;
        return;
    }
    if (threadIdx.x == 0) {
        pv[(size_t)r * P + p] = v;
        pi[(size_t)r * P + p] = best;
        gpu_fence();
        last = atomicAdd(&counters[r], 1) == P - 1;
        if (last) counters[r] = 0;  // ready for the next launch
    }
    __syncthreads();
    if (!last || threadIdx.x >= 32) return;
    gpu_fence();
    v = -INFINITY;
    best = INT_MAX;
    for (int q = threadIdx.x; q < P; q += 32) argmax_pick(v, best, __ldcg(pv + (size_t)r * P + q), __ldcg(pi + (size_t)r * P + q));
    argmax_warp(v, best);
    if (threadIdx.x == 0) ids[r] = best == INT_MAX ? 0 : best;
}
