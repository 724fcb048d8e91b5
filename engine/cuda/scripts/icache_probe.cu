// Session 23 probe (engine/cuda/NOTES.md): what straight-line code costs a launch when its
// instructions are not in the SM's instruction caches.
//
// Why: the decode GEMVs are 40-80 KB of SASS each (gemv_tcp's entry points: fully unrolled
// staging, ring and merge), a batch-1 layer launches three different ones plus the attention
// kernels, and their prologues and epilogues (staging, merge) run once a launch; ncu's stall
// samples at a launch's start show "no instruction" stalls. wip/accnorm's eight-row norm tail (~40
// KB of unrolled, predicated code run once by one block) took ~40 µs under ncu where its
// arithmetic needs a few. How much does a KB of cold code cost?
//
// Kernels: N unrolled IMADs (asm volatile, distinct constants: one 16-byte instruction each, no
// loop) on eight independent chains a thread, one block of four warps an SM; the block's own
// globaltimer span is the figure. Launch patterns: one kernel again and again (warm after the
// first), two or four different kernels in turn (their code evicting each other's), and a rolled
// loop doing the same instructions (the issue cost alone).
// Build and run with CUDA 12+: nvcc -O3 -arch=sm_90 -o icache_probe icache_probe.cu
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <utility>
#include <vector>

#define CK(x)                                                                                  \
    do {                                                                                       \
        cudaError_t e = (x);                                                                   \
        if (e != cudaSuccess) {                                                                \
            printf("%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e));          \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

__device__ __forceinline__ unsigned long long gt() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

template <int I, int SEED>
__device__ __forceinline__ void one(uint32_t (&a)[8]) {
    asm volatile("mad.lo.u32 %0, %0, %1, %2;" : "+r"(a[I & 7]) : "n"(2654435761u + 2 * I), "n"(SEED * 977u + I * 40503u));
}
template <int SEED, int... I>
__device__ __forceinline__ void line(uint32_t (&a)[8], std::integer_sequence<int, I...>) {
    (one<I, SEED>(a), ...);
}

// The straight line is B blocks of 256 IMADs, each block with its own constants.
template <int B, int SEED>
__device__ __forceinline__ void blocks(uint32_t (&a)[8]) {
    if constexpr (B > 0) {
        line<SEED * 64 + B>(a, std::make_integer_sequence<int, 256>{});
        blocks<B - 1, SEED>(a);
    }
}

// timed runs body on eight independent chains a thread and records the block's span.
template <typename Body>
__device__ __forceinline__ void timed(uint32_t* sink, unsigned long long* span, Body body) {
    uint32_t a[8];
#pragma unroll
    for (int i = 0; i < 8; i++) a[i] = threadIdx.x + i;
    __syncthreads();
    const unsigned long long t0 = gt();
    body(a);
    __syncthreads();
    const unsigned long long t1 = gt();
    uint32_t s = 0;
#pragma unroll
    for (int i = 0; i < 8; i++) s ^= a[i];
    if (s == 0x12345678u) sink[threadIdx.x] = s;
    if (threadIdx.x == 0) span[blockIdx.x] = t1 - t0;
}

template <int B, int SEED>
__global__ void __launch_bounds__(128, 1) straight(uint32_t* sink, unsigned long long* span) {
    timed(sink, span, [](uint32_t(&a)[8]) { blocks<B, SEED>(a); });
}

// The same instruction count from a rolled loop (a few KB of code).
__global__ void __launch_bounds__(128, 1) rolled(uint32_t* sink, unsigned long long* span, int B) {
    timed(sink, span, [B](uint32_t(&a)[8]) {
        for (int b = 0; b < B; b++) line<7>(a, std::make_integer_sequence<int, 256>{});
    });
}

int main() {
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    uint32_t* sink;
    unsigned long long* span;
    CK(cudaMalloc(&sink, 4096));
    const int maxLaunch = 64;
    CK(cudaMalloc(&span, sizeof(unsigned long long) * sms * maxLaunch));
    std::vector<unsigned long long> h(sms * maxLaunch);
    // Sizes in KB are 4 · B (256 IMADs of 16 bytes = 4 KB a block).
    typedef void (*K)(uint32_t*, unsigned long long*);
    struct Size {
        int kb;
        K k[4];
    } sizes[] = {
        {8, {straight<2, 1>, straight<2, 2>, straight<2, 3>, straight<2, 4>}},
        {16, {straight<4, 1>, straight<4, 2>, straight<4, 3>, straight<4, 4>}},
        {32, {straight<8, 1>, straight<8, 2>, straight<8, 3>, straight<8, 4>}},
        {64, {straight<16, 1>, straight<16, 2>, straight<16, 3>, straight<16, 4>}},
    };
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    printf("kernel span (median over blocks of the median launch), µs; 4 KB = 256 IMADs\n");
    printf("%6s %10s %10s %10s %10s\n", "KB", "rolled", "same", "2 in turn", "4 in turn");
    for (const Size& sz : sizes) {
        double res[4];
        for (int pat = 0; pat < 4; pat++) {
            const int nk = pat == 2 ? 2 : pat == 3 ? 4 : 1, launches = 48;
            for (int l = 0; l < launches; l++) {
                unsigned long long* sp = span + (size_t)sms * l;
                if (pat == 0)
                    rolled<<<sms, 128, 0, st>>>(sink, sp, sz.kb / 4);
                else
                    sz.k[l % nk]<<<sms, 128, 0, st>>>(sink, sp);
            }
            CK(cudaStreamSynchronize(st));
            CK(cudaGetLastError());
            CK(cudaMemcpy(h.data(), span, sizeof(unsigned long long) * sms * launches, cudaMemcpyDeviceToHost));
            std::vector<double> per;
            for (int l = 8; l < launches; l++) {  // skip the first launches (module load, first fetch)
                std::vector<unsigned long long> b(h.begin() + (size_t)sms * l, h.begin() + (size_t)sms * (l + 1));
                std::sort(b.begin(), b.end());
                per.push_back(b[b.size() / 2] / 1000.0);
            }
            std::sort(per.begin(), per.end());
            res[pat] = per[per.size() / 2];
        }
        printf("%6d %10.2f %10.2f %10.2f %10.2f\n", sz.kb, res[0], res[1], res[2], res[3]);
    }
    return 0;
}
