// bf16 storage of float32 activations (../pack.go, backend.BF16Store): engine/devtrain keeps
// each layer's input as bf16 between the forward and the layer's recomputation
// (Options.CheckpointBF16), half the bytes of float32.
//
//   bf16_pack     n floats → n bf16, round to nearest even (NaN stays a quiet NaN), the same
//                 rounding as engine/tensor.F32ToBF16 and convert.cu's f32_to_bf16.
//   bf16_unpack   n bf16 → n floats, exact.
//
// One element per thread and grid-stride loops: the callers pass row offsets into a buffer,
// so the pointers need not be aligned for vector loads; consecutive threads still touch
// consecutive elements, and these kernels run once per layer per step.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
bf16_pack(uint16_t* __restrict__ out, const float* __restrict__ in, long long n) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        uint32_t u = __float_as_uint(in[i]);
        if ((u & 0x7fffffffu) > 0x7f800000u)
            out[i] = (uint16_t)((u >> 16) | 0x40u);
        else
            out[i] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
}

extern "C" __global__ void __launch_bounds__(256)
bf16_unpack(float* __restrict__ out, const uint16_t* __restrict__ in, long long n) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = bf16_to_f32(in[i]);
}
