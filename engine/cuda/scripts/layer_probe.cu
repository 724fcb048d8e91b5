// Session 23 probe (engine/cuda/NOTES.md): what a batch-1 decode layer's four NVFP4 GEMVs could
// cost if one persistent kernel streamed their weights through shared memory across the layer's
// dependency points, against today's structure of one launch a GEMV with a register ring.
//
// Why: session 22's xlat_probe showed that a GEMV's x (written by the kernel before) reaches a
// block only after the weights it already has in flight: at pdl_wait each SM has its register
// ring's 64 KB requested (~2 µs of DRAM at 4.2 TB/s) and nothing more can be asked for until x is
// staged, so DRAM idles at every GEMV boundary for the staging and the launch tails. A block that
// keeps running across the boundary could keep a deeper ring (shared memory: up to ~200 KB an SM)
// full of the next GEMV's weights while it waits for the grid to finish the current one.
//
// The model: Qwen3-4B's per-layer products at one row — q|k|v 2560→6144, o 4096→2560, gate|up
// 2560→19456, down 9728→2560 — as NVFP4 bytes (codes + E4M3 scales: 1152 B a 16-row 128-wide
// step), 36 layers of distinct weights (2.04 GB, far beyond L2). Work items are 16 rows × 4 steps,
// laid out contiguously (a packing choice the loader could make); a warp's step loads 1 KB of codes
// and 128 B of scales and decodes them in half2 arithmetic — all four words of a lane's 16 bytes
// (heavy: about the real one-row loop's ~130 instructions) or one (light: bandwidth-bound) — and
// partial sums go to the outputs by atomics (values are not checked: timing only).
// Each GEMV's x is the previous GEMV's output (the attention and norms are left out).
//   A: one kernel a GEMV, programmatic dependent launch, D steps a warp in registers issued before
//      pdl_wait, x staged after it — today's gemv_tcp structure (2 blocks of 8 warps an SM).
//   B: one persistent kernel (1 block of 8 or 16 warps an SM), each warp a ring of R steps in shared
//      memory filled by cp.async across GEMV boundaries, a grid barrier (arrival counter) before
//      each GEMV's x is staged; "no barrier": the same without it (a streaming floor); "dataflow":
//      no barrier, each item waits only for the producer tiles of its K slice (session 23).
// Build and run with CUDA 12+ on the GPU: nvcc -O3 -arch=sm_90 -o layer_probe layer_probe.cu
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#define CK(x)                                                                \
    do {                                                                     \
        cudaError_t e = (x);                                                 \
        if (e != cudaSuccess) {                                              \
            printf("%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e)); \
            exit(1);                                                         \
        }                                                                    \
    } while (0)

constexpr int WARPS = 8, THREADS = WARPS * 32, S = 4, STEP_U4 = 72, NPH = 4, LAYERS = 36, KMAX = 9728;
constexpr int NP = LAYERS * NPH;
constexpr int XS_U4 = KMAX * 2 / 16;  // x staged as halves

__host__ __device__ __forceinline__ int ph_rows(int ph) { return ph == 0 ? 6144 : ph == 1 ? 2560 : ph == 2 ? 19456 : 2560; }
__host__ __device__ __forceinline__ int ph_k(int ph) { return ph == 0 ? 2560 : ph == 1 ? 4096 : ph == 2 ? 2560 : 9728; }
__host__ __device__ __forceinline__ int ph_slices(int ph) { return ph_k(ph) / 128 / S; }
__host__ __device__ __forceinline__ int ph_items(int ph) { return ph_rows(ph) / 16 * ph_slices(ph); }

__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ __half2 u2h(uint32_t v) { return *reinterpret_cast<__half2*>(&v); }
__device__ __forceinline__ uint4 ldw(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}
__device__ __forceinline__ uint32_t ldw16(const uint16_t* p) {
    unsigned short v;
    asm volatile("ld.global.nc.u16 %0, [%1];" : "=h"(v) : "l"(p));
    return v;
}
__device__ __forceinline__ void cp16(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"((uint32_t)__cvta_generic_to_shared(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// step multiplies one 128-wide step of rows g and g+8 (codes a, b; scales sc) by x (halves from
// half2 index xb) into fa, fb: 32 nibble pairs a row, decode and FMA in half2.
template <int WORDS>
__device__ __forceinline__ void step(uint4 a, uint4 b, uint32_t sc, const __half2* xs2, int xb, float& fa, float& fb) {
    const uint4* x4 = reinterpret_cast<const uint4*>(xs2 + xb);
    __half2 ha = __float2half2_rn(0.f), hb = ha;
    const uint32_t wa[4] = {a.x, a.y, a.z, a.w}, wb[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
    for (int wi = 0; wi < WORDS; wi++) {
        const uint4 xv = x4[wi];
        const uint32_t xq[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const __half2 xh = u2h(xq[q]);
            ha = __hfma2(u2h((wa[wi] >> (4 * q)) & 0x000F000Fu), xh, ha);
            hb = __hfma2(u2h((wb[wi] >> (4 * q)) & 0x000F000Fu), xh, hb);
        }
    }
    const float2 a2 = __half22float2(ha), b2 = __half22float2(hb);
    fa += (a2.x + a2.y) * (float)(sc & 0xffffu);
    fb += (b2.x + b2.y) * (float)(sc >> 16);
}

// flush adds a finished item's row sums (reduced over the four lanes of a row) to out.
__device__ __forceinline__ void flush(float* out, int tile, int g, int t, float fa, float fb) {
    fa += __shfl_xor_sync(0xffffffffu, fa, 1);
    fa += __shfl_xor_sync(0xffffffffu, fa, 2);
    fb += __shfl_xor_sync(0xffffffffu, fb, 1);
    fb += __shfl_xor_sync(0xffffffffu, fb, 2);
    if (t == 0) {
        atomicAdd(out + tile * 16 + g, fa);
        atomicAdd(out + tile * 16 + g + 8, fb);
    }
}

__device__ __forceinline__ void stage_x(__half2* xs2, const float* x, int K) {
    for (int i = threadIdx.x; i < K / 2; i += blockDim.x) {
        const float2 v = __ldcg(reinterpret_cast<const float2*>(x) + i);
        xs2[i] = __floats2half2_rn(v.x, v.y);
    }
}

// A: one GEMV (phase ph) a launch, today's structure.
template <int D, int WORDS>
__global__ void __launch_bounds__(THREADS, 2) phase_a(const uint4* __restrict__ w, const float* x, float* out, int ph) {
    extern __shared__ uint4 smx[];
    __half2* xs2 = reinterpret_cast<__half2*>(smx);
    const int K = ph_k(ph), slices = ph_slices(ph), items = ph_items(ph);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int gw = blockIdx.x * WARPS + warp, nw = gridDim.x * WARPS;
    const int mine = gw < items ? (items - 1 - gw) / nw + 1 : 0, total = mine * S;
    pdl_trigger();
    uint4 ra[D], rb[D];
    uint32_t sc[D];
    auto issue = [&](int d, int j) {
        const uint4* p = w + ((size_t)(gw + (j / S) * nw) * S + j % S) * STEP_U4;
        ra[d] = ldw(p + g * 4 + t);
        rb[d] = ldw(p + (g + 8) * 4 + t);
        const uint16_t* ps = reinterpret_cast<const uint16_t*>(p + 64);
        sc[d] = ldw16(ps + g * 4 + t) | (ldw16(ps + (g + 8) * 4 + t) << 16);
    };
#pragma unroll
    for (int d = 0; d < D; d++)
        if (d < total) issue(d, d);
    pdl_wait();
    stage_x(xs2, x, K);
    __syncthreads();
    float fa = 0.f, fb = 0.f;
    int item = gw, xb = (gw % slices) * S * 64 + t * 16;  // one division an item, as B
    for (int j0 = 0; j0 < total; j0 += D) {
#pragma unroll
        for (int d = 0; d < D; d++) {
            const int j = j0 + d;
            if (j < total) {
                const int s = j % S;
                step<WORDS>(ra[d], rb[d], sc[d], xs2, xb + s * 64, fa, fb);
                if (j + D < total) issue(d, j + D);
                if (s == S - 1) {
                    flush(out, item / slices, g, t, fa, fb);
                    fa = fb = 0.f;
                    item += nw;
                    xb = (item % slices) * S * 64 + t * 16;
                }
            }
        }
    }
}

// B: the whole chain in one launch, a ring of R steps a warp in shared memory.
// MODE: B_BARRIER (a grid barrier, then the block stages x), B_NOBAR (the same without the
// barrier: a streaming floor), B_DATAFLOW (no barrier: before each item the warp waits for the
// producer tiles covering its K slice — bar[P·MAXT + tile] counts a tile's finished items — and
// stages that slice of x itself; producers signal each item after its partial sums).
#define B_BARRIER 0
#define B_NOBAR 1
#define B_DATAFLOW 2
constexpr int MAXT = 19456 / 16;  // tiles of the widest product (gate|up)
constexpr int XW_U4 = S * 128 * 2 / 16;  // a warp's staged x slice (halves)

template <int R, int NWARP, int WORDS, int MODE>
__global__ void __launch_bounds__(NWARP * 32, 1) persist_b(const uint4* const* __restrict__ W, float* const* __restrict__ O,
                                                       const float* x0, unsigned* bar) {
    extern __shared__ uint4 sm[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int gw = blockIdx.x * NWARP + warp, nw = gridDim.x * NWARP;
    uint4* ring = sm + XS_U4 + warp * R * STEP_U4;
    // B_DATAFLOW's x slice for this warp; the others share the block's whole x.
    __half2* xs2 = reinterpret_cast<__half2*>(MODE == B_DATAFLOW ? sm + XS_U4 + NWARP * R * STEP_U4 + warp * XW_U4 : sm);
    // The issue cursor: phase P (layer·4 + GEMV), the warp's n-th item in it, step s.
    int iP = 0, in = 0, is = 0, islot = 0, cslot = 0;
    auto mine = [&](int P) {
        const int items = ph_items(P % NPH);
        return gw < items ? (items - 1 - gw) / nw + 1 : 0;
    };
    while (iP < NP && mine(iP) == 0) iP++;
    auto issue = [&]() {
        if (iP < NP) {
            const uint4* p = W[iP] + ((size_t)(gw + in * nw) * S + is) * STEP_U4;
            uint4* d = ring + islot * STEP_U4;
            cp16(d + lane, p + lane);
            cp16(d + 32 + lane, p + 32 + lane);
            if (lane < 8) cp16(d + 64 + lane, p + 64 + lane);
            if (++is == S) {
                is = 0;
                if (++in == mine(iP)) {
                    in = 0;
                    do iP++;
                    while (iP < NP && mine(iP) == 0);
                }
            }
        }
        if (++islot == R) islot = 0;
        cp_commit();
    };
    for (int r = 0; r < R; r++) issue();
    for (int P = 0; P < NP; P++) {
        const int ph = P % NPH;
        if (MODE != B_DATAFLOW) {
            __syncthreads();  // every warp done with the previous GEMV (its atomics issued) and with xs
            if (P > 0 && MODE == B_BARRIER && threadIdx.x == 0) {
                __threadfence();
                atomicAdd(bar + P - 1, 1u);
                unsigned v;
                do asm volatile("ld.acquire.gpu.u32 %0, [%1];" : "=r"(v) : "l"(bar + P - 1) : "memory");
                while (v < gridDim.x);
            }
            __syncthreads();
            stage_x(xs2, P == 0 ? x0 : O[P - 1], ph_k(ph));
            __syncthreads();
        }
        const int slices = ph_slices(ph), n = mine(P);
        float fa = 0.f, fb = 0.f;
        for (int i = 0; i < n; i++) {
            const int item = gw + i * nw;
            int xb = (item % slices) * S * 64 + t * 16;
            if (MODE == B_DATAFLOW) {
                const int sl = item % slices;
                if (P > 0) {  // the producer tiles of x's rows [512·sl, 512·sl + 512): one a lane
                    const unsigned need = ph_slices((P - 1) % NPH);
                    const unsigned* c = bar + (size_t)(P - 1) * MAXT + sl * 32 + lane;
                    unsigned v;
                    do asm volatile("ld.acquire.gpu.u32 %0, [%1];" : "=r"(v) : "l"(c) : "memory");
                    while (v < need);
                }
                __syncwarp();
                const float4* xg = reinterpret_cast<const float4*>((P == 0 ? x0 : O[P - 1]) + sl * S * 128 + lane * 16);
                float4 v[4];
#pragma unroll
                for (int u = 0; u < 4; u++) v[u] = __ldcg(xg + u);
#pragma unroll
                for (int u = 0; u < 4; u++) {
                    xs2[lane * 8 + 2 * u] = __floats2half2_rn(v[u].x, v[u].y);
                    xs2[lane * 8 + 2 * u + 1] = __floats2half2_rn(v[u].z, v[u].w);
                }
                __syncwarp();
                xb = t * 16;
            }
            for (int s = 0; s < S; s++) {
                cp_wait<R - 1>();
                __syncwarp();
                const uint4* slot = ring + cslot * STEP_U4;
                const uint16_t* ps = reinterpret_cast<const uint16_t*>(slot + 64);
                const uint32_t sc = ps[g * 4 + t] | ((uint32_t)ps[(g + 8) * 4 + t] << 16);
                step<WORDS>(slot[g * 4 + t], slot[(g + 8) * 4 + t], sc, xs2, xb + s * 64, fa, fb);
                if (++cslot == R) cslot = 0;
                __syncwarp();
                issue();
            }
            flush(O[P], item / slices, g, t, fa, fb);
            fa = fb = 0.f;
            if (MODE == B_DATAFLOW) {  // this item's partial sums, then its tile's count
                __threadfence();
                __syncwarp();
                if (lane == 0) atomicAdd(bar + (size_t)P * MAXT + item / slices, 1u);
            }
        }
    }
}

__global__ void fill(uint4* p, size_t n, uint32_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        // codes of small magnitude (exponent bits clear) so half sums stay finite; scales small
        p[i] = make_uint4(h & 0x33333333u, (h >> 3) & 0x33333333u, (h * 3u) & 0x33333333u, (h * 7u) & 0x33333333u);
    }
}

int main() {
    int dev = 0, sms = 0;
    CK(cudaSetDevice(dev));
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    std::vector<uint4*> W(NP);
    std::vector<float*> O(NP);
    size_t layer_bytes = 0;
    for (int ph = 0; ph < NPH; ph++) layer_bytes += (size_t)ph_items(ph) * S * STEP_U4 * 16;
    for (int P = 0; P < NP; P++) {
        const size_t n = (size_t)ph_items(P % NPH) * S * STEP_U4;
        CK(cudaMalloc(&W[P], n * 16));
        fill<<<1024, 256>>>(W[P], n, 0x9e3779b9u * (P + 1));
        CK(cudaMalloc(&O[P], ph_rows(P % NPH) * sizeof(float)));
        CK(cudaMemset(O[P], 0, ph_rows(P % NPH) * sizeof(float)));
    }
    float* x0;
    CK(cudaMalloc(&x0, KMAX * sizeof(float)));
    CK(cudaMemset(x0, 0, KMAX * sizeof(float)));
    const uint4** dW;
    float** dO;
    unsigned* bar;
    CK(cudaMalloc(&dW, NP * sizeof(void*)));
    CK(cudaMalloc(&dO, NP * sizeof(void*)));
    CK(cudaMalloc(&bar, (size_t)NP * MAXT * sizeof(unsigned)));
    CK(cudaMemcpy(dW, W.data(), NP * sizeof(void*), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dO, O.data(), NP * sizeof(void*), cudaMemcpyHostToDevice));
    CK(cudaDeviceSynchronize());
    printf("SMs %d, %.2f MB a layer, %d layers\n", sms, layer_bytes / 1e6, LAYERS);

    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));

    auto run_a = [&](auto kern, int blocks_per_sm) {
        cudaLaunchAttribute at[1];
        at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[0].val.programmaticStreamSerializationAllowed = 1;
        for (int P = 0; P < NP; P++) {
            cudaLaunchConfig_t c = {};
            c.gridDim = dim3(blocks_per_sm * sms);
            c.blockDim = dim3(THREADS);
            c.dynamicSmemBytes = ph_k(P % NPH) * 2;
            c.stream = st;
            c.attrs = at;
            c.numAttrs = 1;
            CK(cudaLaunchKernelEx(&c, kern, (const uint4*)W[P], (const float*)(P == 0 ? x0 : O[P - 1]), O[P], P % NPH));
        }
    };
    auto run_b = [&](auto kern, int R, int nwarp) {
        const int smem = XS_U4 * 16 + nwarp * R * STEP_U4 * 16 + nwarp * XW_U4 * 16;
        CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        CK(cudaMemsetAsync(bar, 0, (size_t)NP * MAXT * sizeof(unsigned), st));
        kern<<<sms, nwarp * 32, smem, st>>>(dW, dO, x0, bar);
        CK(cudaGetLastError());
    };
    auto timeit = [&](const char* name, auto go) {
        for (int i = 0; i < 3; i++) go();
        CK(cudaStreamSynchronize(st));
        std::vector<float> ms;
        for (int i = 0; i < 9; i++) {
            CK(cudaEventRecord(e0, st));
            go();
            CK(cudaEventRecord(e1, st));
            CK(cudaEventSynchronize(e1));
            float m;
            CK(cudaEventElapsedTime(&m, e0, e1));
            ms.push_back(m);
        }
        std::sort(ms.begin(), ms.end());
        const double us = ms[ms.size() / 2] * 1000.0 / LAYERS;
        printf("%-28s %7.2f µs a layer (min %.2f max %.2f) %5.2f TB/s\n", name, us, ms.front() * 1000.0 / LAYERS,
               ms.back() * 1000.0 / LAYERS, layer_bytes / us / 1e6);
    };
    // heavy: the step decodes all four words of a lane's 16 bytes (~130 instructions, like the real
    // one-row loop); light: one word (~40) — bandwidth-bound, the structure's own cost.
    for (int round = 0; round < 2; round++) {
        timeit("heavy A regs D=4 2x8 warps", [&] { run_a(phase_a<4, 4>, 2); });
        timeit("heavy B smem R=8 16 warps", [&] { run_b(persist_b<8, 16, 4, B_BARRIER>, 8, 16); });
        timeit("heavy B R=8 16w dataflow", [&] { run_b(persist_b<8, 16, 4, B_DATAFLOW>, 8, 16); });
        timeit("heavy B R=8 16w no barrier", [&] { run_b(persist_b<8, 16, 4, B_NOBAR>, 8, 16); });
        timeit("light A regs D=4 2x8 warps", [&] { run_a(phase_a<4, 1>, 2); });
        timeit("light B smem R=8 16 warps", [&] { run_b(persist_b<8, 16, 1, B_BARRIER>, 8, 16); });
        timeit("light B R=8 16w dataflow", [&] { run_b(persist_b<8, 16, 1, B_DATAFLOW>, 8, 16); });
        timeit("light B R=8 16w no barrier", [&] { run_b(persist_b<8, 16, 1, B_NOBAR>, 8, 16); });
    }
    return 0;
}
