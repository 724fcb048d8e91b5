// Session 22 probe (engine/cuda/NOTES.md, call 4): how long does a block's load of x (10 KB,
// L2-resident, written by the previous kernel) take while the block's warps have 64 KB of weights
// (DRAM) in flight, as the one-row GEMV's ring has at pdl_wait? x through ld.global (the LSU path
// the weights use) or through the bulk-copy engine (cp.async.bulk + mbarrier, PTX ISA 8.0: build
// it with CUDA 12+, e.g. on the device: nvcc -O3 -arch=sm_90 -o xlat xlat_probe.cu; ./xlat).
// Mode 4 (session 23): the same 64 KB an SM requested by half of the block's warps only, x
// loaded by the other half — is x queued behind its own warp's loads or behind the SM's?
// Mode 5: x by blocks (one in eight) that hold no weights while the other SMs' are in flight.
#include <cstdio>
#include <cstdint>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); return 1; } } while (0)
constexpr int THREADS = 512, K = 2560, D = 4;

__device__ __forceinline__ unsigned long long gt() { unsigned long long t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t; }
__device__ __forceinline__ uint32_t sa(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

// Weights through asm volatile so that ptxas keeps them ahead of the clock and x's loads.
__device__ __forceinline__ uint4 ldw(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

__global__ void produce(float* x, int n, float v) { int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) x[i] = v + i; }

// mode 0: no weights in flight; 1: weights, then x by ld.global; 2: weights, then x by bulk copy;
// 3: no weights, x by bulk copy. delay: ns spun after the weights' loads before x's.
__global__ void __launch_bounds__(THREADS, 1) probe(const uint4* __restrict__ w, size_t wstride, const float* __restrict__ x,
                                                    int mode, int delay, unsigned long long* lat, float* sink,
                                                    unsigned long long* lat4) {
    __shared__ alignas(128) float xs[K];
    __shared__ alignas(8) unsigned long long bar;
    __shared__ double red[THREADS / 32];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    if (tid == 0) {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(sa(&bar)));
        asm volatile("fence.mbarrier_init.release.cluster;");
    }
    __syncthreads();
    const unsigned long long ts = gt();  // mode 4's reference: all warps start here
    uint4 wa[D], wb[D], wa2[D], wb2[D];
    const uint4* base = w + ((size_t)blockIdx.x * (THREADS / 32) + warp) * wstride;
    if (mode == 1 || mode == 2) {
#pragma unroll
        for (int d = 0; d < D; d++) { wa[d] = ldw(base + 64 * d + lane); wb[d] = ldw(base + 64 * d + 32 + lane); }
    }
    if (mode == 4 && warp < THREADS / 64) {  // the first half of the warps hold the whole block's weights
        const uint4* base2 = base + (THREADS / 64) * wstride;
#pragma unroll
        for (int d = 0; d < D; d++) {
            wa[d] = ldw(base + 64 * d + lane); wb[d] = ldw(base + 64 * d + 32 + lane);
            wa2[d] = ldw(base2 + 64 * d + lane); wb2[d] = ldw(base2 + 64 * d + 32 + lane);
        }
    }
    if (mode == 5) {
        // One block in eight holds no weights and loads x at the delay; the others hold the
        // weights (64 KB an SM, as mode 1) and no x: does x wait behind the other SMs' loads?
        if (blockIdx.x % 8 == 0) {
            if (tid < 256) {
                while (gt() - ts < (unsigned long long)delay) {}
                const unsigned long long a = gt();
                float xv[K / 256];
#pragma unroll
                for (int i = 0; i < K / 256; i++) xv[i] = x[tid + 256 * i];
                double s = 0.0;
#pragma unroll
                for (int i = 0; i < K / 256; i++) s = fma((double)xv[i], (double)xv[i], s);
                const unsigned long long b = gt();
                if (tid == 0) lat4[3 * blockIdx.x] = a - ts, lat4[3 * blockIdx.x + 1] = b - a;
                if (s == 12345.0) sink[tid] = (float)s;
            }
        } else {
            const uint4* b2 = base;
            uint4 v[D][2];
#pragma unroll
            for (int d = 0; d < D; d++) v[d][0] = ldw(b2 + 64 * d + lane), v[d][1] = ldw(b2 + 64 * d + 32 + lane);
            float acc = 0.f;
#pragma unroll
            for (int d = 0; d < D; d++) acc += __uint_as_float(v[d][0].x ^ v[d][1].y);
            const unsigned long long c = gt();
            if (tid == 0) lat4[3 * blockIdx.x + 2] = c - ts;
            if (acc == 12345.f) sink[tid] = acc;
        }
        return;
    }
    if (mode == 4) {
        // x by the warps holding no weights, requested delay ns after the block's start; the
        // weights' warps time when their loads have landed. Both from ts.
        if (warp >= THREADS / 64) {
            while (gt() - ts < (unsigned long long)delay) {}
            const unsigned long long a = gt();
            float xv[K / 256];
#pragma unroll
            for (int i = 0; i < K / 256; i++) xv[i] = x[tid - 256 + 256 * i];
            double s = 0.0;
#pragma unroll
            for (int i = 0; i < K / 256; i++) s = fma((double)xv[i], (double)xv[i], s);
            const unsigned long long b = gt();
            if (tid == THREADS / 2) lat4[3 * blockIdx.x] = a - ts, lat4[3 * blockIdx.x + 1] = b - a;
            if (s == 12345.0) sink[tid] = (float)s;
        } else {
            float acc = 0.f;
#pragma unroll
            for (int d = 0; d < D; d++)
                acc += __uint_as_float(wa[d].x ^ wb[d].y) + __uint_as_float(wa[d].z & wb[d].w) +
                       __uint_as_float(wa2[d].x ^ wb2[d].y) + __uint_as_float(wa2[d].z & wb2[d].w);
            const unsigned long long c = gt();
            if (tid == 0) lat4[3 * blockIdx.x + 2] = c - ts;
            if (acc == 12345.f) sink[tid] = acc;
        }
        return;
    }
    const unsigned long long t0 = gt();
    if (delay > 0) while (gt() - t0 < (unsigned long long)delay) {}
    const unsigned long long t1 = gt();
    double ss = 0.0;
    if (mode == 0 || mode == 1) {
        float xv[K / 256];
        if (tid < 256) {
#pragma unroll
            for (int i = 0; i < K / 256; i++) xv[i] = x[tid + 256 * i];
#pragma unroll
            for (int i = 0; i < K / 256; i++) ss = fma((double)xv[i], (double)xv[i], ss);
        }
    } else {
        if (tid == 0) {
            asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(sa(&bar)), "r"(K * 4) : "memory");
            asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(sa(xs)), "l"(x),
                         "r"(K * 4), "r"(sa(&bar)) : "memory");
        }
        uint32_t done = 0;
        while (!done)
            asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                         : "=r"(done) : "r"(sa(&bar)), "r"(0) : "memory");
        if (tid < 256)
#pragma unroll
            for (int i = 0; i < K / 256; i++) ss = fma((double)xs[tid + 256 * i], (double)xs[tid + 256 * i], ss);
    }
    for (int o = 16; o; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (lane == 0) red[warp] = ss;
    __syncthreads();
    const unsigned long long t2 = gt();
    if (tid == 0) { lat[2 * blockIdx.x] = t2 - t1; }
    float acc = (float)red[0];
    if (mode == 1 || mode == 2) {
#pragma unroll
        for (int d = 0; d < D; d++) acc += __uint_as_float(wa[d].x ^ wb[d].y) + __uint_as_float(wa[d].z & wb[d].w);
    }
    const unsigned long long t3 = gt();
    if (tid == 0) lat[2 * blockIdx.x + 1] = t3 - t1;
    if (acc == 12345.f) sink[tid] = acc;
}

int main() {
    int sms; CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    const size_t wbytes = (size_t)4 << 30;
    uint4* w; float *x, *sink; unsigned long long* lat;
    CK(cudaMalloc(&w, wbytes)); CK(cudaMemset(w, 1, wbytes));
    unsigned long long* lat4;
    CK(cudaMalloc(&x, K * 4)); CK(cudaMalloc(&sink, 4096)); CK(cudaMalloc(&lat, 16 * sms)); CK(cudaMalloc(&lat4, 24 * sms));
    const size_t wstride = 64 * D;  // uint4 a warp: D steps of 1 KB
    const size_t per = (size_t)sms * (THREADS / 32) * wstride;  // uint4 a launch
    const int nrot = (int)(wbytes / 16 / per);
    const char* names[] = {"no weights, ld.global", "weights, ld.global", "weights, bulk copy", "no weights, bulk copy", "weights in other warps"};
    printf("%d SMs, %zu KB of weights in flight an SM, x %d KB, %d weight slabs\n", sms, (THREADS / 32) * wstride * 16 / 1024, K * 4 / 1024, nrot);
    std::vector<unsigned long long> h(2 * sms);
    int rot = 0;
    for (int delay : {0, 1000, 2000}) {
        for (int mode = 0; mode < 4; mode++) {
            std::vector<double> med, mx, tot;
            for (int rep = 0; rep < 30; rep++) {
                produce<<<(K + 255) / 256, 256>>>(x, K, (float)rep);
                probe<<<sms, THREADS>>>(w + (size_t)(rot++ % nrot) * per, wstride, x, mode, delay, lat, sink, lat4);
                CK(cudaGetLastError());
                CK(cudaMemcpy(h.data(), lat, 16 * sms, cudaMemcpyDeviceToHost));
                std::vector<double> a, b;
                for (int i = 0; i < sms; i++) a.push_back((double)h[2 * i]), b.push_back((double)h[2 * i + 1]);
                std::sort(a.begin(), a.end()); std::sort(b.begin(), b.end());
                if (rep >= 5) med.push_back(a[sms / 2]), mx.push_back(a[sms - 1]), tot.push_back(b[sms / 2]);
            }
            std::sort(med.begin(), med.end()); std::sort(mx.begin(), mx.end()); std::sort(tot.begin(), tot.end());
            printf("delay %4d ns  %-24s x staged: median block %6.0f ns (slowest %6.0f); weights used too: %6.0f ns\n", delay, names[mode],
                   med[med.size() / 2], mx[mx.size() / 2], tot[tot.size() / 2]);
        }
    }
    // Mode 4: x requested by the warps without weights at a delay after the block's start.
    std::vector<unsigned long long> h4(3 * sms);
    for (int delay : {0, 250, 500, 1000, 1500}) {
        std::vector<double> req, took, land;
        for (int rep = 0; rep < 30; rep++) {
            produce<<<(K + 255) / 256, 256>>>(x, K, (float)rep);
            probe<<<sms, THREADS>>>(w + (size_t)(rot++ % nrot) * per, wstride, x, 4, delay, lat, sink, lat4);
            CK(cudaGetLastError());
            CK(cudaMemcpy(h4.data(), lat4, 24 * sms, cudaMemcpyDeviceToHost));
            std::vector<double> a, b, c;
            for (int i = 0; i < sms; i++) a.push_back((double)h4[3 * i]), b.push_back((double)h4[3 * i + 1]), c.push_back((double)h4[3 * i + 2]);
            std::sort(a.begin(), a.end()); std::sort(b.begin(), b.end()); std::sort(c.begin(), c.end());
            if (rep >= 5) req.push_back(a[sms / 2]), took.push_back(b[sms / 2]), land.push_back(c[sms / 2]);
        }
        std::sort(req.begin(), req.end()); std::sort(took.begin(), took.end()); std::sort(land.begin(), land.end());
        printf("x by other warps: requested at %5.0f ns, took %5.0f ns; the other warps' 64 KB landed at %5.0f ns (medians)\n",
               req[req.size() / 2], took[took.size() / 2], land[land.size() / 2]);
    }
    // Mode 5: x by blocks holding no weights (one in eight), the others' weights in flight.
    for (int delay : {0, 500, 1000}) {
        std::vector<double> req, took, land;
        for (int rep = 0; rep < 30; rep++) {
            produce<<<(K + 255) / 256, 256>>>(x, K, (float)rep);
            probe<<<sms, THREADS>>>(w + (size_t)(rot++ % nrot) * per, wstride, x, 5, delay, lat, sink, lat4);
            CK(cudaGetLastError());
            CK(cudaMemcpy(h4.data(), lat4, 24 * sms, cudaMemcpyDeviceToHost));
            std::vector<double> a, b, c;
            for (int i = 0; i < sms; i++) {
                if (i % 8 == 0) a.push_back((double)h4[3 * i]), b.push_back((double)h4[3 * i + 1]);
                else c.push_back((double)h4[3 * i + 2]);
            }
            std::sort(a.begin(), a.end()); std::sort(b.begin(), b.end()); std::sort(c.begin(), c.end());
            if (rep >= 5) req.push_back(a[a.size() / 2]), took.push_back(b[b.size() / 2]), land.push_back(c[c.size() / 2]);
        }
        std::sort(req.begin(), req.end()); std::sort(took.begin(), took.end()); std::sort(land.begin(), land.end());
        printf("x by blocks without weights: requested at %5.0f ns, took %5.0f ns; the other SMs' 64 KB landed at %5.0f ns\n",
               req[req.size() / 2], took[took.size() / 2], land[land.size() / 2]);
    }
    return 0;
}
