// Shared pieces of the flash attention kernels (flash.cu forward, flash_bwd.cu backward):
// tile geometry, cp.async copies, ldmatrix, the bf16 m16n8k16 mma and the swizzled tile layout.
#pragma once
#include "common.cuh"
#include <cuda_bf16.h>

#define FA_M 64
#define FA_N 64
#define FA_D 128
#define FA_WARPS 4
#define FA_CHUNKS (FA_D / 8)  // 16-byte chunks per shared row

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void fa_cp_async16(uint32_t dst, const void* src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void fa_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void fa_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

// mma_bf16 accumulates c += a·b for one m16n8k16 tile (a: 4 registers, b: 2, c: 4 floats).
__device__ __forceinline__ void mma_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// pack_bf16 rounds two floats to bf16 (nearest even) into one register, lo in the low half.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

// swz is the byte offset of 16-byte chunk c of row r in a swizzled [rows][FA_D] bf16 tile.
__device__ __forceinline__ uint32_t swz(int r, int c) { return (uint32_t)(r * FA_D * 2 + ((c ^ (r & 7)) << 4)); }

// fa_load_tile copies rows [n0, n0+FA_N) of one KV head (row stride ld elements) into a
// swizzled shared tile; rows at or past nrows are zero-filled. 128 threads × 8 chunks.
__device__ __forceinline__ void fa_load_tile(uint32_t tile, const __nv_bfloat16* __restrict__ src, size_t ld, int n0,
                                             int nrows) {
#pragma unroll
    for (int i = 0; i < FA_N * FA_CHUNKS / (FA_WARPS * 32); i++) {
        const int idx = threadIdx.x + i * FA_WARPS * 32;
        const int r = idx / FA_CHUNKS, c = idx % FA_CHUNKS;
        const bool ok = n0 + r < nrows;
        const __nv_bfloat16* p = src + (size_t)(ok ? n0 + r : 0) * ld + c * 8;
        fa_cp_async16(tile + swz(r, c), p, ok ? 16 : 0);
    }
}


// fa_mma_tile accumulates acc (16 rows × N columns) += A · Bᵀ for one k step of 16 (head dims
// kk·16..kk·16+15): A in registers (m16n8k16 layout), B the first N rows of a swizzled
// [rows][FA_D] tile (ldmatrix, not transposed): S = Q·Kᵀ, dP = dO·Vᵀ.
template <int N>
__device__ __forceinline__ void fa_mma_tile(float (&acc)[N / 8][4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                            uint32_t tile, int kk, int lane) {
#pragma unroll
    for (int jp = 0; jp < N / 16; jp++) {
        // matrices: rows jp*16+0..7 / cols kk*16+0..7, +8..15; rows +8..15 / same
        const int row = jp * 16 + (lane & 7) + ((lane >> 4) << 3);
        const int chunk = kk * 2 + ((lane >> 3) & 1);
        uint32_t b0, b1, b2, b3;
        ldsm_x4(tile + swz(row, chunk), b0, b1, b2, b3);
        mma_bf16(acc[2 * jp], a0, a1, a2, a3, b0, b1);
        mma_bf16(acc[2 * jp + 1], a0, a1, a2, a3, b2, b3);
    }
}

// fa_mma_tile_t accumulates acc (16 rows × FA_D columns, 16 n-tiles of 8) += A · B for one
// k step of 16: A is the 16×16 operand in registers (a0..a3, m16n8k16 layout), B rows
// kk·16..kk·16+15 of a swizzled [rows][FA_D] tile read transposed (ldmatrix .trans): P·V in
// the forward, dS·K in the backward.
__device__ __forceinline__ void fa_mma_tile_t(float (&acc)[FA_D / 8][4], uint32_t a0, uint32_t a1, uint32_t a2,
                                              uint32_t a3, uint32_t tile, int kk, int lane) {
#pragma unroll
    for (int dp = 0; dp < FA_D / 16; dp++) {
        const int row = kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
        const int chunk = dp * 2 + (lane >> 4);
        uint32_t b0, b1, b2, b3;
        ldsm_x4_t(tile + swz(row, chunk), b0, b1, b2, b3);
        mma_bf16(acc[2 * dp], a0, a1, a2, a3, b0, b1);
        mma_bf16(acc[2 * dp + 1], a0, a1, a2, a3, b2, b3);
    }
}

// fa_load_rows copies ROWS rows (from row r0, row stride ld elements) of one head's 128 bf16
// columns into a swizzled shared tile with THREADS threads; rows at or past nrows are zeroed.
template <int ROWS, int THREADS>
__device__ __forceinline__ void fa_load_rows(uint32_t tile, const __nv_bfloat16* __restrict__ src, size_t ld, int r0,
                                             int nrows) {
#pragma unroll
    for (int i = 0; i < ROWS * FA_CHUNKS / THREADS; i++) {
        const int idx = threadIdx.x + i * THREADS;
        const int r = idx / FA_CHUNKS, c = idx % FA_CHUNKS;
        const bool ok = r0 + r < nrows;
        const __nv_bfloat16* p = src + (size_t)(ok ? r0 + r : 0) * ld + c * 8;
        fa_cp_async16(tile + swz(r, c), p, ok ? 16 : 0);
    }
}
