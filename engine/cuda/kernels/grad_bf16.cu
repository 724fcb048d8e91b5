// Kernels for bf16 parameter gradients (backend.GradientFormat, engine/cuda/gradient.go): a
// gradient stored as bf16 bits is widened exactly when read and rounded to nearest even
// (f32_bf16_bits, as engine/tensor.F32ToBF16) once a call when written. AdamW's bf16-gradient
// forms live with the other AdamW kernels (train.cu, optim4.cu), the SIMT dw kernel's with its
// float32 form (train.cu mm_bwd_dw_bf16).
#include "common.cuh"

#define GRID_STRIDE(i, n) \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

// sumsq_part_bf16 is sumsq_part_f32 (train.cu) on widened bf16 values: the same grid (a function
// of n only), the same per-thread order and block reduction, so a bf16 gradient's sum equals the
// f32 kernel's sum of the widened values bit for bit.
extern "C" __global__ void sumsq_part_bf16(double* part, const uint16_t* x, size_t n) {
    __shared__ double red[32];
    double s = 0.0;
    GRID_STRIDE(i, n) {
        double v = (double)bf16_to_f32(x[i]);
        s = fma(v, v, s);
    }
    s = block_sum_d(s, red);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

// embedding_bwd_bf16 is embedding_bwd_f32 (train.cu) into a bf16 table: each touched row's
// column c starts from its widened value, adds the row's positions in ascending order in
// float32, and is rounded once.
extern "C" __global__ void embedding_bwd_bf16(uint16_t* dtable, const float* dout, const int* uniq, const int* off,
                                              const int* pos, int H) {
    const int u = blockIdx.x;
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= H) return;
    uint16_t* row = dtable + (size_t)uniq[u] * H;
    float s = bf16_to_f32(row[c]);
    for (int i = off[u]; i < off[u + 1]; i++) s = __fadd_rn(s, dout[(size_t)pos[i] * H + c]);
    row[c] = (uint16_t)f32_bf16_bits(s);
}
