// Kernels for bf16 parameter gradients (backend.GradientFormat, engine/cuda/gradient.go): a
// gradient stored as bf16 bits is widened exactly when read and rounded to nearest even
// (f32_bf16_bits, as engine/tensor.F32ToBF16) once a call when written. AdamW's bf16-gradient
// forms live with the other AdamW kernels (train.cu, optim4.cu), the SIMT dw kernel's and the sums
// of squares' with their float32 forms (train.cu mm_bwd_dw_bf16, sumsq_part_bf16).
#include "common.cuh"

#define GRID_STRIDE(i, n) \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

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
