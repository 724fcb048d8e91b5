// One-token decode of every decoder layer in one persistent launch (backend.LayerDecoder).
//
// Why: a batch-1 decode layer was ~73 µs in ~10 kernels against ~14 µs of weight reading at
// 4 TB/s (NOTES.md, session 6, "Decode: the budget"): each kernel paid ~2.5 µs of launch and
// ramp plus a drain, and the GEMVs' split-K merges a fence and an arrival count. Here one grid
// of one block per SM (cooperative launch: all blocks resident) walks all layers; the phases of
// a layer are separated by grid barriers (~1.5 µs each, measured).
//
// Weights stream through shared memory. A block is 16 consumer warps and one producer warp. The
// producer knows every GEMV item the block will multiply, in order, for all layers (weights do
// not depend on activations), and copies each into a ring of NS shared-memory stages with
// cp.async as soon as a stage is free — through attention, staging and grid barriers alike — so
// the loads in flight do not occupy registers and the memory system is never idle. (A first
// version kept DL_D steps a warp in registers, gemv_tcp's ring: 16 warps an SM were latency
// bound at 0.5-0.8 TB/s and spilled; NOTES.md session 7.)
//
// A layer, for the token's residual row x (kept in every block's shared memory, identical in
// all of them: each block computes the same values in the same order):
//   A  xin = x + Σ down partials (previous layer); q|k|v = RMSNorm(xin)·Wqkvᵀ   (whole tiles)
//   B  q/k RMSNorm + RoPE, the new key and value into the cache, attention over the context:
//      block (kv head, key chunk) writes one record (unnormalised output, max, sum) per query
//      head of the group
//   C  ctx = merge of the chunk records (in chunk order); o partials = ctx·Woᵀ (K split S_o ways)
//   D  xmid = xin + Σ o partials; gate|up = RMSNorm(xmid)·Wgate|upᵀ            (whole tiles)
//   E  down partials = SwiGLU(gate, up)·Wdownᵀ (K split S_d ways)
// and after the last layer x = xmid + Σ down partials is written back. K-split partial sums
// are added by their consumer in slice order (no atomics, no arrival counters): results do not
// depend on timing, only on the grid size (which is the GPU's SM count).
//
// GEMV work: an item is (16-row tile, K slice of ss 128-wide steps); a block takes a contiguous
// range of items (slice-major), and its (item, step) pairs go round-robin to the 16 consumer
// warps, which decode and multiply on tensor cores as gemv_tcp.cuh does (gemv_tc.cuh); each warp
// leaves its sum of an item in shared memory and the block adds the 16 in warp order. The
// numeric path differs from the per-op kernels' in summation order (tests compare within float
// tolerance).
//
// Measured on the H200 it is slower than the per-op path (220-233, an earlier version 259,
// against 366 tok/s at context 512; NOTES.md, session 7, has the phase clocks and why), so the backend runs it only with
// QWENGO_CUDA_DECODE_LAYERS=1.
#include "gemv_tc.cuh"

#define DL_CONS 512   // consumer threads (16 warps); the producer warp is threads 512..543
#define DL_THREADS 544
#define DL_WARPS 16
#define DL_HD 128  // head_dim
#define DL_NB 4    // keys a warp loads at once in the attention phase

// The descriptor the host uploads (decode_layers.go writes the same layout: every field 8 bytes).
struct dl_mat {
    const uint8_t* packed;
    const uint8_t* scales;
    double gscale;  // tensor scale × 2^14 (exact as a double)
    long long N;
};
struct dl_layer {
    dl_mat q, k, v, o, gate, up, down;
    const float* in_norm;
    const float* post_norm;
    const float* q_norm;
    const float* k_norm;
    float* kcache;
    float* vcache;
};
struct dl_args {
    const dl_layer* layers;
    float* x;           // [H] the token's residual row, in and out
    float* qkv;         // [Nq + Nk + Nv]
    float* att;         // [C][nH][DL_HD + 2] chunk records
    float* po;          // [So][H] o partials (unscaled)
    float* pd;          // [Sd][H] down partials (unscaled)
    float* gu;          // [2][I] gate, up
    unsigned* bar;      // [2]: arrivals, generation (self-resetting)
    const float* invf;  // [DL_HD/2] RoPE inverse frequencies
    long long* clocks;  // null, or [barriers][grid][2] clock64 at each block's arrival and
                        // departure, then [layers·4][grid][4] per GEMV phase (dl_gemv_run)
    long long nlayers, H, I, nH, nKV, C, So, Sd;
    long long NS, ssmax, maxloc;  // weight stages, largest item's steps, most items a block takes
    double eps, scale;
};

// ---- consumer-only synchronisation (the producer warp never waits on these) ----
__device__ __forceinline__ void dl_bar() { asm volatile("bar.sync 1, %0;" ::"n"(DL_CONS) : "memory"); }

__device__ __forceinline__ double dl_sum_d(double v, double* red) {
    v = warp_sum_d(v);
    dl_bar();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    dl_bar();
    double s = 0.0;
    for (int i = 0; i < DL_WARPS; i++) s += red[i];
    return s;
}

// dl_grid_sync: every block's consumers arrive, then all leave. The last arriver resets the
// count and bumps the generation; the others spin on the generation. The fences order the
// block's writes before its arrival and the others' writes before its later reads (which go
// through L2: __ldcg).
__device__ __forceinline__ void dl_grid_sync(unsigned* bar, long long* clocks, int& nb) {
    dl_bar();
    if (threadIdx.x == 0) {
        long long* ck = clocks ? clocks + ((size_t)nb * gridDim.x + blockIdx.x) * 2 : nullptr;
        if (ck) ck[0] = clock64();
        volatile unsigned* gen = bar + 1;
        const unsigned g = *gen;
        gpu_fence();
        if (atomicAdd(bar, 1u) == gridDim.x - 1) {
            atomicExch(bar, 0u);
            gpu_fence();
            atomicExch(bar + 1, g + 1);
        } else {
            while (*gen == g) {
            }
        }
        gpu_fence();
        if (ck) ck[1] = clock64();
    }
    nb++;
    dl_bar();
}

// ---- mbarriers and cp.async (sm_80+ forms) ----
__device__ __forceinline__ uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void mbar_init(uint64_t* b, int count) {
    asm volatile("mbarrier.init.shared.b64 [%0], %1;" ::"r"(smem_u32(b)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* b) {
    asm volatile("{.reg .b64 st;\n mbarrier.arrive.shared.b64 st, [%0];\n}" ::"r"(smem_u32(b)) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* b, int parity) {
    asm volatile(
        "{.reg .pred p;\n"
        "W: mbarrier.try_wait.parity.shared.b64 p, [%0], %1;\n"
        " @!p bra W;\n}" ::"r"(smem_u32(b)),
        "r"(parity)
        : "memory");
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_u32(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async8(void* dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(smem_u32(dst)), "l"(src) : "memory");
}
// cp_async_arrive: the mbarrier counts this thread's arrival once its earlier cp.asyncs land.
__device__ __forceinline__ void cp_async_arrive(uint64_t* b) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared.b64 [%0];" ::"r"(smem_u32(b)) : "memory");
}

// A GEMV phase: up to three matrices sharing one input of K elements, K split in S slices of ss
// steps; job j's outputs go to out[j] (scaled, S == 1) or to part (unscaled, S slices of N:
// single job).
struct dl_gemv {
    dl_mat m0, m1, m2;  // by value: addresses come from registers
    float* out0;
    float* out1;
    float* out2;
    float* part;
    int t0, t1, nj;  // tiles of jobs 0 and 1, jobs
    int ntiles, K, S, ss;
};

// dl_phase builds GEMV phase ph (0 q|k|v, 1 o, 2 gate|up, 3 down) of layer L.
__device__ __forceinline__ dl_gemv dl_phase(const dl_args& A, const dl_layer& L, int ph) {
    const int H = (int)A.H, I = (int)A.I, Nq = (int)A.nH * DL_HD, Nk = (int)A.nKV * DL_HD;
    dl_gemv G;
    G.out0 = G.out1 = G.out2 = G.part = nullptr;
    G.nj = 1, G.S = 1, G.K = H;
    switch (ph) {
        case 0:
            G.m0 = L.q, G.m1 = L.k, G.m2 = L.v, G.nj = 3;
            G.out0 = A.qkv, G.out1 = A.qkv + Nq, G.out2 = A.qkv + Nq + Nk;
            break;
        case 1:
            G.m0 = G.m1 = G.m2 = L.o, G.K = Nq, G.S = (int)A.So, G.part = A.po;
            break;
        case 2:
            G.m0 = L.gate, G.m1 = G.m2 = L.up, G.nj = 2, G.out0 = A.gu, G.out1 = A.gu + I;
            break;
        default:
            G.m0 = G.m1 = G.m2 = L.down, G.K = I, G.S = (int)A.Sd, G.part = A.pd;
    }
    G.t0 = (int)((G.m0.N + 15) / 16);
    G.t1 = G.nj > 1 ? (int)((G.m1.N + 15) / 16) : 0;
    G.ntiles = G.t0 + G.t1 + (G.nj > 2 ? (int)((G.m2.N + 15) / 16) : 0);
    G.ss = G.K / 128 / G.S;
    return G;
}

// dl_job finds the matrix and local tile of flattened tile ft (selects, no dynamic indexing).
__device__ __forceinline__ dl_mat dl_job(const dl_gemv& G, int ft, int& lt, int& j) {
    lt = ft, j = 0;
    if (G.nj > 1 && lt >= G.t0) {
        lt -= G.t0, j = 1;
        if (G.nj > 2 && lt >= G.t1) lt -= G.t1, j = 2;
    }
    return j == 0 ? G.m0 : (j == 1 ? G.m1 : G.m2);
}

// dl_items is the block's item range [i0, i1) of the phase's ntiles·S items.
__device__ __forceinline__ void dl_items(const dl_gemv& G, int& i0, int& i1) {
    const long long n = (long long)G.ntiles * G.S;
    i0 = (int)(n * blockIdx.x / gridDim.x);
    i1 = (int)(n * (blockIdx.x + 1) / gridDim.x);
}

// dl_ring is the block's weight stage ring: stage s holds an item's 16 rows of codes (pitch pc
// bytes, ss·64 used) then its 16 rows of E4M3 scales (pitch ps, ss·8 used).
struct dl_ring {
    uint8_t* st;
    uint64_t* full;   // [NS]: the producer's copies landed (32 arrivals: its lanes)
    uint64_t* empty;  // [NS]: the consumers are done with it (16 arrivals: their warps)
    int NS, pc, ps, bytes;
};

// dl_produce is the producer warp: every item of every GEMV phase of every layer, in the
// consumers' order, into the ring.
__device__ __forceinline__ void dl_produce(const dl_args& A, const dl_ring& R) {
    const int lane = threadIdx.x & 31;
    int k = 0;
    for (int li = 0; li < (int)A.nlayers; li++) {
        const dl_layer& L = A.layers[li];
        for (int ph = 0; ph < 4; ph++) {
            const dl_gemv G = dl_phase(A, L, ph);
            int i0, i1;
            dl_items(G, i0, i1);
            const int Kh = G.K / 2, Ks = G.K / 16;
            long long waited = 0;  // clock64 cycles waiting for free stages (figures only)
            for (int item = i0; item < i1; item++, k++) {
                const int s = k % R.NS;
                if (k >= R.NS) {
                    const long long t0 = A.clocks ? clock64() : 0;
                    mbar_wait(R.empty + s, ((k / R.NS) - 1) & 1);
                    if (A.clocks) waited += clock64() - t0;
                }
                const int slice = item / G.ntiles, ft = item - slice * G.ntiles;
                int lt, j;
                const dl_mat m = dl_job(G, ft, lt, j);
                uint8_t* st = R.st + (size_t)s * R.bytes;
                const int nrow = min(16, (int)m.N - lt * 16);
                for (int r = 0; r < nrow; r++) {
                    const size_t n = (size_t)lt * 16 + r;
                    const uint8_t* src = m.packed + n * Kh + (size_t)slice * G.ss * 64;
                    for (int c = lane; c < G.ss * 4; c += 32) cp_async16(st + r * R.pc + c * 16, src + c * 16);
                    const uint8_t* ssrc = m.scales + n * Ks + (size_t)slice * G.ss * 8;
                    for (int c = lane; c < G.ss; c += 32) cp_async8(st + 16 * R.pc + r * R.ps + c * 8, ssrc + c * 8);
                }
                cp_async_arrive(R.full + s);
            }
            if (A.clocks && lane == 0)
                A.clocks[(size_t)10 * A.nlayers * gridDim.x + ((size_t)(li * 4 + ph) * gridDim.x + blockIdx.x) * 4 + 3] = waited;
        }
    }
    asm volatile("cp.async.wait_all;" ::: "memory");
}

// dl_gemv_run runs a GEMV phase on the consumer warps: prologue(kb, ke) (grid barrier, then
// stage the input range [kb, ke) into xs, ending with dl_bar), then the block's items from the
// ring (stream position k), then the block's sums to the outputs. red: [maxloc][16][16] floats.
template <typename Prologue>
__device__ __forceinline__ void dl_gemv_run(const dl_gemv& G, const dl_ring& R, int& k, uint32_t* xs, float* red,
                                            long long* clk, Prologue prologue) {
    const long long c0 = clk ? clock64() : 0;
    int i0, i1;
    dl_items(G, i0, i1);
    const int nloc = i1 - i0;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int sl0 = nloc > 0 ? i0 / G.ntiles : 0, sl1 = nloc > 0 ? (i1 - 1) / G.ntiles : 0;
    const int kb = sl0 * G.ss * 128, ke = nloc > 0 ? (sl1 + 1) * G.ss * 128 : kb;
    prologue(kb, ke);
    for (int i = threadIdx.x; i < nloc * DL_WARPS * 16; i += DL_CONS) red[i] = 0.f;
    dl_bar();
    const long long c1 = clk ? clock64() : 0;
    long long waited = 0;

    // The block's (item, step) pairs round-robin over the warps: pair p = il·ss + step goes to
    // warp p mod 16, so every warp has ⌈nloc·ss/16⌉ or one fewer and they move through the ring
    // together. A warp releases an item's stage when it moves past it (or ends), having waited
    // for the copies of each item it touches; items it skips it releases too (the empty barrier
    // counts all 16 warps). Each warp's sum of an item goes to red[il][warp] (zero if none).
    const int cstride = (ke - kb) / 2;  // u32 per hi|lo column
    const uint32_t* xcol = xs + (size_t)(g & 1) * cstride + t * 16;
    const bool live = g < 2;  // column 0: x's f16 part, 1: its remainder; others zero
    const int k0 = k, npairs = nloc * G.ss;
    // Two accumulator sets (even and odd 32-element quarters of a step): the step's eight mmas
    // form four chains of two instead of two chains of four. (Four sets spilled at the
    // 120-register cap, ptxas 11.8.)
    float acc[2][2][4];
    auto zero = [&]() {
#pragma unroll
        for (int i = 0; i < 2; i++)
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int c = 0; c < 4; c++) acc[i][h][c] = 0.f;
    };
    zero();
    auto flush = [&](int il) {
        if (t == 0) {  // lane (g, 0) holds weight rows g and g+8 (hi and lo columns)
            float v0 = 0.f, v1 = 0.f;
#pragma unroll
            for (int i = 0; i < 2; i++) {
                v0 += (acc[i][0][0] + acc[i][1][0]) + (acc[i][0][1] + acc[i][1][1]);
                v1 += (acc[i][0][2] + acc[i][1][2]) + (acc[i][0][3] + acc[i][1][3]);
            }
            float* r = red + ((size_t)il * DL_WARPS + warp) * 16;
            r[g] = v0, r[g + 8] = v1;
        }
        zero();
    };
    int rel = 0;  // items this warp has released
    auto release_below = [&](int il) {
        __syncwarp();
        for (; rel < il; rel++)
            if (lane == 0) mbar_arrive(R.empty + (k0 + rel) % R.NS);
    };
    int cur = -1, il = warp / G.ss, step = warp - il * G.ss, s0 = 0;
    const uint8_t* st = R.st;
    for (int p = warp; p < npairs; p += DL_WARPS) {
        if (il != cur) {
            if (cur >= 0) flush(cur);
            release_below(il);
            const int kk = k0 + il;
            const long long t0 = clk ? clock64() : 0;
            mbar_wait(R.full + kk % R.NS, (kk / R.NS) & 1);
            if (clk) waited += clock64() - t0;
            st = R.st + (size_t)(kk % R.NS) * R.bytes;
            s0 = ((i0 + il) / G.ntiles) * G.ss - kb / 128;
            cur = il;
        }
        const uint4 qa = *reinterpret_cast<const uint4*>(st + g * R.pc + step * 64 + t * 16);
        const uint4 qb = *reinterpret_cast<const uint4*>(st + (g + 8) * R.pc + step * 64 + t * 16);
        const uint32_t ca = *reinterpret_cast<const uint16_t*>(st + 16 * R.pc + g * R.ps + step * 8 + t * 2);
        const uint32_t cb = *reinterpret_cast<const uint16_t*>(st + 16 * R.pc + (g + 8) * R.ps + step * 8 + t * 2);
        uint4 bx = make_uint4(0u, 0u, 0u, 0u);
        const uint32_t sfa = e4m3x2_to_f16x2(ca), sfb = e4m3x2_to_f16x2(cb);
        const uint32_t wra[4] = {qa.x, qa.y, qa.z, qa.w}, wrb[4] = {qb.x, qb.y, qb.z, qb.w};
        tc_quarters(sfa, sfb, wra, wrb,
                    [&](int i, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t a4, uint32_t a5, uint32_t a6,
                        uint32_t a7) {
                        if (live) bx = reinterpret_cast<const uint4*>(xcol + 64 * (s0 + step))[i];
                        mma_f16(acc[i & 1][0], a0, a1, a2, a3, bx.x, bx.y);
                        mma_f16(acc[i & 1][1], a4, a5, a6, a7, bx.z, bx.w);
                    });
        step += DL_WARPS;
        while (step >= G.ss) step -= G.ss, il++;
    }
    if (cur >= 0) flush(cur);
    release_below(nloc);
    k = k0 + nloc;
    // Figures: warp 0's prologue (barrier and staging), its items, and its waits for copies.
    if (clk && threadIdx.x == 0) clk[0] = c1 - c0, clk[1] = clock64() - c1, clk[2] = waited;
    dl_bar();
    // The block's sums, warp by warp in order, to the outputs.
    for (int i = threadIdx.x; i < nloc * 16; i += DL_CONS) {
        const int il = i >> 4, row = i & 15;
        const float* r = red + (size_t)il * DL_WARPS * 16 + row;
        float s = 0.f;
#pragma unroll
        for (int w = 0; w < DL_WARPS; w++) s += r[w * 16];
        const int item = i0 + il, slice = item / G.ntiles, ft = item - slice * G.ntiles;
        int lt, j;
        const dl_mat m = dl_job(G, ft, lt, j);
        const int n = lt * 16 + row;
        if (n >= m.N) continue;
        if (G.S == 1) {
            float* o = j == 0 ? G.out0 : (j == 1 ? G.out1 : G.out2);
            o[n] = __fmul_rn(s, (float)m.gscale);
        } else {
            G.part[(size_t)slice * m.N + n] = s;
        }
    }
}

// dl_clk is where block blockIdx.x records GEMV phase ph of layer li (null without clocks).
__device__ __forceinline__ long long* dl_clk(const dl_args& A, int li, int ph) {
    if (!A.clocks) return nullptr;
    return A.clocks + (size_t)10 * A.nlayers * gridDim.x + ((size_t)(li * 4 + ph) * gridDim.x + blockIdx.x) * 4;
}

// dl_add_all adds the S slices of partial sums part [S][H] (unscaled) to xin in shared
// memory: xin[k] += (Σ_s part[s][k])·scale, slices in order. A thread takes four elements and
// issues its loads four slices at a time before summing (one L2 round trip per four, not per slice).
__device__ __forceinline__ void dl_add_all(float* xin, const float* part, int S, int H, float scale) {
    for (int k4 = threadIdx.x; k4 < H / 4; k4 += DL_CONS) {
        float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int q0 = 0; q0 < S; q0 += 4) {  // four loads in flight (eight spilled)
            float4 v[4];
#pragma unroll
            for (int q = 0; q < 4; q++)
                if (q0 + q < S) v[q] = __ldcg(reinterpret_cast<const float4*>(part + (size_t)(q0 + q) * H) + k4);
#pragma unroll
            for (int q = 0; q < 4; q++)
                if (q0 + q < S) sum.x += v[q].x, sum.y += v[q].y, sum.z += v[q].z, sum.w += v[q].w;
        }
        float4 x = reinterpret_cast<float4*>(xin)[k4];
        x.x = __fadd_rn(x.x, __fmul_rn(sum.x, scale)), x.y = __fadd_rn(x.y, __fmul_rn(sum.y, scale));
        x.z = __fadd_rn(x.z, __fmul_rn(sum.z, scale)), x.w = __fadd_rn(x.w, __fmul_rn(sum.w, scale));
        reinterpret_cast<float4*>(xin)[k4] = x;
    }
}

// dl_add_partials returns x + (Σ_s part[s·n + k])·scale (slices in order), as dl_add_all.
__device__ __forceinline__ float dl_add_partials(float x, const float* part, int S, int n, int k, float scale) {
    float s = 0.f;
    for (int q = 0; q < S; q++) s += __ldcg(part + (size_t)q * n + k);
    return __fadd_rn(x, __fmul_rn(s, scale));
}

// dl_norm_inv: 1/sqrt(mean(v²) + eps) over v[0..n) in shared memory (fp64 sums).
__device__ __forceinline__ float dl_norm_inv(const float* v, int n, float eps, double* red) {
    double ss = 0.0;
    for (int j = threadIdx.x; j < n; j += DL_CONS) {
        const double d = (double)v[j];
        ss = fma(d, d, ss);
    }
    ss = dl_sum_d(ss, red);
    return (float)(1.0 / sqrt(ss / (double)n + (double)eps));
}

// dl_head_norm: warp-wide RMSNorm of one head (lane holds dims 4·lane … 4·lane+3) with weight w.
__device__ __forceinline__ float4 dl_head_norm(float4 v, const float* w, float eps) {
    double ss = (double)v.x * v.x;
    ss = fma((double)v.y, (double)v.y, ss);
    ss = fma((double)v.z, (double)v.z, ss);
    ss = fma((double)v.w, (double)v.w, ss);
    ss = warp_sum_d(ss);
    const float inv = (float)(1.0 / sqrt(ss / (double)DL_HD + (double)eps));
    const float4 g = reinterpret_cast<const float4*>(w)[threadIdx.x & 31];
    return make_float4(__fmul_rn(g.x, __fmul_rn(v.x, inv)), __fmul_rn(g.y, __fmul_rn(v.y, inv)),
                       __fmul_rn(g.z, __fmul_rn(v.z, inv)), __fmul_rn(g.w, __fmul_rn(v.w, inv)));
}

// dl_attention is phase B for block (kv head, chunk): G query heads, keys [jb, je) of the
// context pos + 1. qs: shared [G + 1][DL_HD] (the last row for the new key); rec: shared
// [DL_WARPS][G][DL_HD + 2]; rope: the position's cosines then sines [DL_HD]. Consumer threads
// only; blocks without a unit skip it (the dl_bar()s are block-uniform).
template <int G>
__device__ __forceinline__ void dl_attention(const dl_args& A, const dl_layer& L, int pos, int C, float* qs, float* rec,
                                             const float* rope) {
    const int nH = (int)A.nH, nKV = (int)A.nKV;
    if ((int)blockIdx.x >= nKV * C) return;
    const int kvh = blockIdx.x / C, c = blockIdx.x - kvh * C;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int ctx = pos + 1, chunk = (ctx + C - 1) / C;
    const int jb = min(c * chunk, ctx), je = min(jb + chunk, ctx);
    const size_t kvld = (size_t)nKV * DL_HD;
    const float eps = (float)A.eps, scale = (float)A.scale;
    const bool mine = pos >= jb && pos < je;  // this block writes the new key and value
    const int Nq = nH * DL_HD, Nk = nKV * DL_HD;
    const float* kbase = L.kcache + (size_t)kvh * DL_HD + 4 * lane;
    const float* vbase = L.vcache + (size_t)kvh * DL_HD + 4 * lane;
    // The warp's first keys and values go out now (the cache rows before pos do not depend on
    // this token), to arrive while the queries are normalised and rotated; row pos is read
    // again once this block has written it.
    float4 kk[DL_NB], vv[DL_NB];
    const int jfirst = jb + warp * DL_NB;
    auto load = [&](int j0) {
#pragma unroll
        for (int b = 0; b < DL_NB; b++) {
            kk[b] = vv[b] = make_float4(0.f, 0.f, 0.f, 0.f);
            if (j0 + b < je) {
                kk[b] = __ldcg(reinterpret_cast<const float4*>(kbase + (size_t)(j0 + b) * kvld));
                vv[b] = __ldcg(reinterpret_cast<const float4*>(vbase + (size_t)(j0 + b) * kvld));
            }
        }
    };
    load(jfirst);
    if (warp < G) {
        const float4 q = __ldcg(reinterpret_cast<const float4*>(A.qkv + (size_t)(kvh * G + warp) * DL_HD) + lane);
        reinterpret_cast<float4*>(qs + warp * DL_HD)[lane] = dl_head_norm(q, L.q_norm, eps);
    } else if (warp == G && mine) {
        const float4 k = __ldcg(reinterpret_cast<const float4*>(A.qkv + Nq + (size_t)kvh * DL_HD) + lane);
        reinterpret_cast<float4*>(qs + G * DL_HD)[lane] = dl_head_norm(k, L.k_norm, eps);
        const float4 v = __ldcg(reinterpret_cast<const float4*>(A.qkv + Nq + Nk + (size_t)kvh * DL_HD) + lane);
        reinterpret_cast<float4*>(L.vcache + (size_t)pos * kvld + (size_t)kvh * DL_HD)[lane] = v;
    }
    dl_bar();
    // RoPE in place: pair (d, d + 64) of row r by one thread.
    for (int i = threadIdx.x; i < (G + (mine ? 1 : 0)) * (DL_HD / 2); i += DL_CONS) {
        const int r = i / (DL_HD / 2), d = i - r * (DL_HD / 2);
        float* y = qs + r * DL_HD;
        float o1, o2;
        rope_apply(y[d], y[d + DL_HD / 2], rope[d], rope[DL_HD / 2 + d], o1, o2);
        y[d] = o1, y[d + DL_HD / 2] = o2;
        if (r == G) {
            float* kc = L.kcache + (size_t)pos * kvld + (size_t)kvh * DL_HD;
            kc[d] = o1, kc[d + DL_HD / 2] = o2;
        }
    }
    dl_bar();

    float4 q[G], acc[G];
    float m[G], l[G];
#pragma unroll
    for (int h = 0; h < G; h++) {
        q[h] = reinterpret_cast<const float4*>(qs + h * DL_HD)[lane];
        acc[h] = make_float4(0.f, 0.f, 0.f, 0.f);
        m[h] = -INFINITY, l[h] = 0.f;
    }
    if (mine && pos - jfirst >= 0 && pos - jfirst < DL_NB) load(jfirst);  // with the new row
    for (int j0 = jfirst; j0 < je; j0 += DL_WARPS * DL_NB) {
        if (j0 != jfirst) load(j0);
#pragma unroll
        for (int h = 0; h < G; h++) {
            float s[DL_NB];
            float mx = m[h];
#pragma unroll
            for (int b = 0; b < DL_NB; b++) {
                float d = __fmul_rn(q[h].x, kk[b].x);
                d = fmaf(q[h].y, kk[b].y, d);
                d = fmaf(q[h].z, kk[b].z, d);
                d = fmaf(q[h].w, kk[b].w, d);
                d = warp_sum(d) * scale;
                s[b] = j0 + b < je ? d : -INFINITY;
                mx = fmaxf(mx, s[b]);
            }
            const float corr = expf(m[h] - mx);  // 0 while m = -inf; key j0 < je is finite
            float4 a = make_float4(acc[h].x * corr, acc[h].y * corr, acc[h].z * corr, acc[h].w * corr);
            float ls = l[h] * corr;
#pragma unroll
            for (int b = 0; b < DL_NB; b++) {
                const float p = s[b] == -INFINITY ? 0.f : expf(s[b] - mx);
                ls += p;
                a.x = fmaf(p, vv[b].x, a.x), a.y = fmaf(p, vv[b].y, a.y);
                a.z = fmaf(p, vv[b].z, a.z), a.w = fmaf(p, vv[b].w, a.w);
            }
            acc[h] = a, l[h] = ls, m[h] = mx;
        }
    }
    // The block's 16 partial results per query head, merged in warp order.
#pragma unroll
    for (int h = 0; h < G; h++) {
        float* r = rec + ((size_t)warp * G + h) * (DL_HD + 2);
        r[4 * lane] = acc[h].x, r[4 * lane + 1] = acc[h].y, r[4 * lane + 2] = acc[h].z, r[4 * lane + 3] = acc[h].w;
        if (lane == 0) r[DL_HD] = m[h], r[DL_HD + 1] = l[h];
    }
    dl_bar();
    for (int i = threadIdx.x; i < G * DL_HD; i += DL_CONS) {
        const int h = i / DL_HD, d = i - h * DL_HD;
        float M = -INFINITY;
        for (int w = 0; w < DL_WARPS; w++) M = fmaxf(M, rec[((size_t)w * G + h) * (DL_HD + 2) + DL_HD]);
        float o = 0.f, Ls = 0.f;
        for (int w = 0; w < DL_WARPS; w++) {
            const float* r = rec + ((size_t)w * G + h) * (DL_HD + 2);
            const float wt = r[DL_HD] == -INFINITY ? 0.f : expf(r[DL_HD] - M);
            o = fmaf(wt, r[d], o);
            Ls = fmaf(wt, r[DL_HD + 1], Ls);
        }
        float* out = A.att + ((size_t)c * nH + kvh * G + h) * (DL_HD + 2);
        out[d] = o;
        if (d == 0) out[DL_HD] = M, out[DL_HD + 1] = Ls;
    }
}

// dl_stage writes the multiplied input over [kb, ke) into xs (tcp_stage's layout) with the
// consumer threads, then synchronises them.
template <typename V>
__device__ __forceinline__ void dl_stage(uint32_t* xs, int kb, int ke, V val) {
    tcp_stage(xs, 1, kb, (ke - kb) / 32, (ke - kb) / 2, [&](int, int k) { return val(k); }, (int)threadIdx.x, DL_CONS);
    dl_bar();
}

// decode_layers_g{G}(args, pos): grid = the SM count (all resident: cooperative launch), block
// DL_THREADS, dynamic shared memory as decode_layers.go's dlLayout: the weight ring (NS stages
// of 16·(pc + ps) bytes), its 2·NS mbarriers, then floats: xin [H]; a region of
// max(kmax + maxloc·16·16, 16·G·(DL_HD+2), 2·Nq) holding xs [kmax] and red (GEMV phases), the
// attention records (phase B) or, in phase C's staging, the merged context past xs; qs [(G+1)·DL_HD]; mw [nH·(C+1)]; rope [DL_HD].
template <int G>
__device__ __forceinline__ void decode_layers(const dl_args* __restrict__ ap, int pos) {
    const dl_args& A = *ap;
    const int H = (int)A.H, I = (int)A.I, nH = (int)A.nH, C = (int)A.C;
    const int So = (int)A.So, Sd = (int)A.Sd, Nq = nH * DL_HD;
    const float eps = (float)A.eps;
    extern __shared__ __align__(128) uint8_t dsm[];
    dl_ring R;
    R.NS = (int)A.NS, R.pc = (int)A.ssmax * 64 + 16, R.ps = ((int)A.ssmax * 8 + 15) & ~15;
    R.bytes = 16 * (R.pc + R.ps);
    R.st = dsm;
    R.full = reinterpret_cast<uint64_t*>(dsm + (size_t)R.NS * R.bytes);
    R.empty = R.full + R.NS;
    float* xin = reinterpret_cast<float*>(R.empty + R.NS);
    const int kmax = max(max(H, Nq), I);
    uint32_t* xs = reinterpret_cast<uint32_t*>(xin + H);
    float* red = xin + H + kmax;
    float* rec = xin + H;  // phase B only
    float* qs = xin + H + max(max(kmax + (int)A.maxloc * DL_WARPS * 16, DL_WARPS * G * (DL_HD + 2)), 2 * Nq);
    float* mw = qs + (G + 1) * DL_HD;  // [nH][C] merge weights, then [nH] 1/L
    float* rope = mw + nH * (C + 1);   // [DL_HD]: the position's cosines, then sines
    __shared__ double dred[32];

    if (threadIdx.x < R.NS) {
        mbar_init(R.full + threadIdx.x, 32);
        mbar_init(R.empty + threadIdx.x, DL_WARPS);
    }
    __syncthreads();  // the only block-wide barrier: the producer leaves here
    if (threadIdx.x >= DL_CONS) {
        dl_produce(A, R);
        return;
    }

    for (int k = threadIdx.x; k < H; k += DL_CONS) xin[k] = __ldcg(A.x + k);
    if (threadIdx.x < DL_HD / 2) rope_cs(pos, A.invf[threadIdx.x], rope[threadIdx.x], rope[DL_HD / 2 + threadIdx.x]);
    dl_bar();
    float gsc_down = 0.f;  // the previous layer's down scale (0: no partials yet)
    int nb = 0;            // barriers passed (the clocks' index)
    int ks = 0;            // position in the weight stream
    for (int li = 0; li < (int)A.nlayers; li++) {
        const dl_layer& L = A.layers[li];
        // A: q|k|v = RMSNorm(x + down partials)·Wᵀ
        dl_gemv_run(dl_phase(A, L, 0), R, ks, xs, red, dl_clk(A, li, 0), [&](int kb, int ke) {
            if (li > 0) {
                dl_grid_sync(A.bar, A.clocks, nb);
                dl_add_all(xin, A.pd, Sd, H, gsc_down);
                dl_bar();
            }
            const float inv = dl_norm_inv(xin, H, eps, dred);
            dl_stage(xs, kb, ke, [&](int k) { return __fmul_rn(L.in_norm[k], __fmul_rn(xin[k], inv)); });
        });
        dl_grid_sync(A.bar, A.clocks, nb);
        // B: attention
        dl_attention<G>(A, L, pos, C, qs, rec, rope);
        // C: o partials = merge(att)·Woᵀ
        dl_gemv_run(dl_phase(A, L, 1), R, ks, xs, red, dl_clk(A, li, 1), [&](int kb, int ke) {
            dl_grid_sync(A.bar, A.clocks, nb);
            const int h0 = kb / DL_HD, nh = (ke - kb) / DL_HD;
            // (head, chunk) maxima and sums, one thread each, then per head the weights.
            float* mm = rec;  // [nh·C] maxima, then [nh·C] sums (xs is staged only below)
            for (int i = threadIdx.x; i < nh * C; i += DL_CONS) {
                const int hi = i / C, c = i - hi * C;
                const float* r = A.att + ((size_t)c * nH + h0 + hi) * (DL_HD + 2);
                mm[i] = __ldcg(r + DL_HD);
                mm[nh * C + i] = __ldcg(r + DL_HD + 1);
            }
            dl_bar();
            for (int i = threadIdx.x; i < nh; i += DL_CONS) {
                float M = -INFINITY;
                for (int c = 0; c < C; c++) M = fmaxf(M, mm[i * C + c]);
                float Ls = 0.f;
                for (int c = 0; c < C; c++) {
                    const float mc = mm[i * C + c];
                    const float w = mc == -INFINITY ? 0.f : expf(mc - M);
                    mw[i * C + c] = w;
                    Ls = fmaf(w, mm[nh * C + i * C + c], Ls);
                }
                mw[nh * C + i] = 1.f / Ls;
            }
            dl_bar();
            // The merged context of [kb, ke) into ctx (past the staged range, inside the region),
            // a thread an element with its chunks' loads issued sixteen at a time, then staged.
            float* ctx = reinterpret_cast<float*>(xs) + Nq;
            const size_t cs = (size_t)nH * (DL_HD + 2);
            for (int e = threadIdx.x; e < ke - kb; e += DL_CONS) {
                const int i = (kb + e) / DL_HD - h0, d = (kb + e) % DL_HD;
                const float* r = A.att + (size_t)(h0 + i) * (DL_HD + 2) + d;
                float o = 0.f;
                for (int c0 = 0; c0 < C; c0 += 16) {
                    float v[16];
#pragma unroll
                    for (int j = 0; j < 16; j++) v[j] = c0 + j < C ? __ldcg(r + (c0 + j) * cs) : 0.f;
#pragma unroll
                    for (int j = 0; j < 16; j++)
                        if (c0 + j < C) o = fmaf(mw[i * C + c0 + j], v[j], o);
                }
                ctx[e] = o * mw[nh * C + i];
            }
            dl_bar();
            dl_stage(xs, kb, ke, [&](int k) { return ctx[k - kb]; });
        });
        // D: gate|up = RMSNorm(x + o partials)·Wᵀ
        const float gsc_o = (float)L.o.gscale;
        dl_gemv_run(dl_phase(A, L, 2), R, ks, xs, red, dl_clk(A, li, 2), [&](int kb, int ke) {
            dl_grid_sync(A.bar, A.clocks, nb);
            dl_add_all(xin, A.po, So, H, gsc_o);
            dl_bar();
            const float inv = dl_norm_inv(xin, H, eps, dred);
            dl_stage(xs, kb, ke, [&](int k) { return __fmul_rn(L.post_norm[k], __fmul_rn(xin[k], inv)); });
        });
        // E: down partials = SwiGLU(gate, up)·Wdownᵀ
        dl_gemv_run(dl_phase(A, L, 3), R, ks, xs, red, dl_clk(A, li, 3), [&](int kb, int ke) {
            dl_grid_sync(A.bar, A.clocks, nb);
            dl_stage(xs, kb, ke, [&](int k) {
                const float gv = __ldcg(A.gu + k);
                const float e = expf(-gv);
                return __fmul_rn(__fdiv_rn(gv, __fadd_rn(1.0f, e)), __ldcg(A.gu + I + k));
            });
        });
        gsc_down = (float)L.down.gscale;
    }
    dl_grid_sync(A.bar, A.clocks, nb);
    // x = xmid + the last layer's down partials: block b writes its share.
    const int per = (H + gridDim.x - 1) / gridDim.x;
    for (int k = blockIdx.x * per + threadIdx.x; k < min(H, (blockIdx.x + 1) * per); k += DL_CONS)
        A.x[k] = dl_add_partials(xin[k], A.pd, Sd, H, k, gsc_down);
}

#define DL_ENTRY(G)                                                                              \
    extern "C" __global__ void __launch_bounds__(DL_THREADS, 1) decode_layers_g##G(const dl_args* a, \
                                                                                   int pos) {     \
        decode_layers<G>(a, pos);                                                                \
    }
DL_ENTRY(1)
DL_ENTRY(2)
DL_ENTRY(4)
DL_ENTRY(8)
