// Tensor-core NVFP4 helpers shared by the decode GEMVs (gemv_tc.cu: one token row; gemv_tcb.cu:
// up to eight rows, k-sliced): E2M1 pairs decoded into f16 bits, E4M3 scale pairs converted to
// f16x2, the m16n8k16 f16 mma and f16 packing. gemv_tc.cu's header comment explains the decode
// and the k-permutation both kernels use.
#pragma once
#include "common.cuh"

// e2m1_word returns the four half2 of a packed word of eight E2M1 codes, elements (p, p+4) in
// r[p], each value times 2^-14: magnitude bits to half bits [11:9], the sign to bit 15 (exact, as
// dot8 in common.cuh). 11 instructions instead of the direct form's 16 (a pair:
// ((w << 9-4p) & 0x0E000E00) | ((w << 12-4p) & 0x80008000), two shifts and two masks): the even
// nibbles' codes are first gathered one byte each as 2·magnitude + 128·sign, which is the f16
// high byte of the value × 2^-14, the odd nibbles' the same way, and each pair is then two of
// those bytes placed as the high bytes of a half2 (a byte permute or a mask). Checked equal to
// the direct form for all 2^32 words (session 8, on the host). The GEMV inner loops are bound by
// instruction issue (NOTES.md, session 5), and the decode was three quarters of a step's
// instructions.
__device__ __forceinline__ void e2m1_word(uint32_t w, uint32_t (&r)[4]) {
    const uint32_t ev = ((w << 1) & 0x0E0E0E0Eu) | ((w << 4) & 0x80808080u);  // nibbles 0, 2, 4, 6
    const uint32_t od = ((w >> 3) & 0x0E0E0E0Eu) | (w & 0x80808080u);         // nibbles 1, 3, 5, 7
    r[0] = __byte_perm(ev, 0, 0x2404);  // bytes 0 and 2 of ev as the high bytes: elements 0, 4
    r[1] = __byte_perm(od, 0, 0x2404);  // elements 1, 5
    r[2] = ev & 0xFF00FF00u;            // elements 2, 6
    r[3] = od & 0xFF00FF00u;            // elements 3, 7
}

__device__ __forceinline__ uint32_t e4m3x2_to_f16x2(uint32_t two) {
    uint32_t r;
    asm("{.reg .b16 t;\n cvt.u16.u32 t, %1;\n cvt.rn.f16x2.e4m3x2 %0, t;\n}" : "=r"(r) : "r"(two));
    return r;
}

__device__ __forceinline__ uint32_t hmul2(uint32_t a, uint32_t b) {
    __half2 r = __hmul2(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b));
    return *reinterpret_cast<uint32_t*>(&r);
}

__device__ __forceinline__ void mma_f16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                        uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_h2(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
}

// tc_quarters walks the four 32-element quarters of one 128-wide weight step of rows g and g+8
// (lane (g, t) holds words wra, wrb: its 32 elements of each row; sfa, sfb: their two E4M3 block
// scales as f16x2, from e4m3x2_to_f16x2) and hands f(i, a0, …, a7) quarter i's A fragments of
// the m16n8k16 pair: the E2M1 pairs as half2 (× 2^-14), scaled. Shared by the tensor-core GEMVs
// (gemv_tcb.cu, gemv_tcp.cuh, decode_layers.cu), which differ in what they multiply them with.
template <typename F>
__device__ __forceinline__ void tc_quarters(uint32_t sfa, uint32_t sfb, const uint32_t (&wra)[4],
                                            const uint32_t (&wrb)[4], F f) {
    const uint32_t sa0 = __byte_perm(sfa, 0, 0x1010), sa1 = __byte_perm(sfa, 0, 0x3232);
    const uint32_t sb0 = __byte_perm(sfb, 0, 0x1010), sb1 = __byte_perm(sfb, 0, 0x3232);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const uint32_t fa = i < 2 ? sa0 : sa1, fb = i < 2 ? sb0 : sb1;
        uint32_t pa[4], pb[4];
        e2m1_word(wra[i], pa);
        e2m1_word(wrb[i], pb);
        const uint32_t a0 = hmul2(pa[0], fa), a1 = hmul2(pb[0], fb);
        const uint32_t a2 = hmul2(pa[1], fa), a3 = hmul2(pb[1], fb);
        const uint32_t a4 = hmul2(pa[2], fa), a5 = hmul2(pb[2], fb);
        const uint32_t a6 = hmul2(pa[3], fa), a7 = hmul2(pb[3], fb);
        f(i, a0, a1, a2, a3, a4, a5, a6, a7);
    }
}

// tc_quarters_raw is tc_quarters without the scales: quarter i's A fragments are the E2M1 pairs
// as half2 (× 2^-14, exact), for the one-row form that applies each block's scale to the mma's
// sums instead (gemv_tcp.cuh CS).
template <typename F>
__device__ __forceinline__ void tc_quarters_raw(const uint32_t (&wra)[4], const uint32_t (&wrb)[4], F f) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
        uint32_t pa[4], pb[4];
        e2m1_word(wra[i], pa);
        e2m1_word(wrb[i], pb);
        f(i, pa[0], pb[0], pa[1], pb[1], pa[2], pb[2], pa[3], pb[3]);
    }
}

// stage_x_hilo writes rows [0, T) of x (row stride ldx) over k range [k0, k0 + 32·chunks) to
// shared memory in the permuted hi/lo f16 pair order of the tensor-core GEMVs: for chunk c of
// row r, u32 slot 4i+q (i, q < 4) of the hi column xs[(2r)·cstride + 16c …] holds the pair of
// elements (8i+q, 8i+q+4) as f16(x) and the lo column xs[(2r+1)·cstride + 16c …] the pair of
// remainders x − f16(x). Consecutive threads read consecutive 8-byte pieces (coalesced): one
// thread per (row, chunk) with eight 16-byte loads each was measured slower (device run 19:
// 9728→2560 12.5 → 15.1 µs), its loads 128 bytes apart. A thread issues the loads of up to
// STAGE_U of its pieces before converting any (several rows: 4 pieces a thread at 8 rows and 4
// steps a slice), so they cost one round trip from L2, not one each — staging follows the
// previous kernel's end (pdl_wait) on every GEMV's critical path. Session 11, call 4 (TestFigures
// GEMV, 8 rows): 2560→9728 18.63 → 18.33 µs, 9728→2560 18.28 → 17.80, 2560→4096 10.51 → 10.19,
// 4096→2560 10.26 → 9.86; decode batch 8 1,810-1,850 → 1,876-1,879 tok/s. One row (one piece a
// thread) keeps the plain form: the unrolled one was 2-3 % slower there.
#define STAGE_U 4

// hilo_slot is the u32 slot, within its chunk's 16, of pair j (0..7) of chunk c in a hi (par 0)
// or lo (par 1) column: 2j, or with SWZ its 16-byte quarter j/2 XOR-ed with par + 2·((c/2) mod 2).
// Why (gemv_tcp.cuh's reader, session 11 analysis): lane (g, t) of a warp reads quarter i of chunk
// t of column 2·row + (g mod 2) with one 16-byte load; the 8 lanes of a load phase (g = 2q, 2q+1;
// t = 0..3) then hit chunks 64 bytes apart in columns 1024 bytes apart — only two 16-byte bank
// groups, a 4-way conflict on every x load (8 rows: both passes, all four phases). With the XOR
// the eight lanes of a phase read eight different bank groups.
template <bool SWZ>
__device__ __forceinline__ int hilo_slot(int c, int j, int par) {
    if (!SWZ) return 2 * j;
    return 4 * ((j >> 1) ^ (par + 2 * ((c >> 1) & 1))) + 2 * (j & 1);
}

// put_hilo stores one staged piece — elements e, e+1, e+4, e+5 of chunk c of row r, pair slot j —
// as its f16 pairs in the hi column and their remainders x − f16(x) in the lo column (the layout
// stage_x_hilo's comment gives). Every staging form writes its pieces through it.
template <bool SWZ>
__device__ __forceinline__ void put_hilo(uint32_t* xs, int cstride, int r, int c, int j, float ax, float ay, float bx,
                                         float by) {
    const __half ha = __float2half_rn(ax), hb = __float2half_rn(bx);
    const __half hc = __float2half_rn(ay), hd = __float2half_rn(by);
    uint32_t* hi = xs + (size_t)(2 * r) * cstride + c * 16 + hilo_slot<SWZ>(c, j, 0);
    uint32_t* lo = xs + (size_t)(2 * r + 1) * cstride + c * 16 + hilo_slot<SWZ>(c, j, 1);
    hi[0] = pack_h2(__half2float(ha), __half2float(hb));
    hi[1] = pack_h2(__half2float(hc), __half2float(hd));
    lo[0] = pack_h2(ax - __half2float(ha), bx - __half2float(hb));
    lo[1] = pack_h2(ay - __half2float(hc), by - __half2float(hd));
}

template <bool SWZ = false>
__device__ __forceinline__ void stage_x_hilo(uint32_t* xs, const float* __restrict__ x, int ldx, int T, int k0,
                                             int chunks, int cstride) {
    const int n = T * chunks * 8;
    if (T == 1 && n <= (int)blockDim.x) {  // one piece a thread (decode, batch 1): the plain form
        const int i = threadIdx.x;
        if (i < n) {
            const int c = i >> 3, j = i & 7, e = 8 * (j >> 1) + 2 * (j & 1);
            const float* xc = x + k0 + c * 32 + e;
            const float2 a = *reinterpret_cast<const float2*>(xc), b = *reinterpret_cast<const float2*>(xc + 4);
            put_hilo<SWZ>(xs, cstride, 0, c, j, a.x, a.y, b.x, b.y);
        }
        return;
    }
    for (int i0 = threadIdx.x; i0 < n; i0 += STAGE_U * blockDim.x) {
        float2 a[STAGE_U], b[STAGE_U];
#pragma unroll
        for (int u = 0; u < STAGE_U; u++) {
            const int i = i0 + u * blockDim.x;
            if (i >= n) break;
            const int r = T == 1 ? 0 : i / (chunks * 8), rem = i - r * (chunks * 8);  // T == 1 folds in gemv_tc
            const int c = rem >> 3, j = rem & 7, e = 8 * (j >> 1) + 2 * (j & 1);
            const float* xc = x + (size_t)r * ldx + k0 + c * 32 + e;
            a[u] = *reinterpret_cast<const float2*>(xc);      // e, e+1
            b[u] = *reinterpret_cast<const float2*>(xc + 4);  // e+4, e+5
        }
#pragma unroll
        for (int u = 0; u < STAGE_U; u++) {
            const int i = i0 + u * blockDim.x;
            if (i >= n) break;
            const int r = T == 1 ? 0 : i / (chunks * 8), rem = i - r * (chunks * 8);
            const int c = rem >> 3, j = rem & 7;
            put_hilo<SWZ>(xs, cstride, r, c, j, a[u].x, a[u].y, b[u].x, b[u].y);
        }
    }
}

// tcp_stage (gemv_tcp.cuh, decode_layers.cu: threads tid of nth) writes rows [0, T) of the multiplied input over k range [k0, k0 + 32·chunks) into
// xs in stage_x_hilo's permuted hi/lo layout (gemv_tc.cuh), computing each element with val(r, k).
template <bool SWZ = false, typename V>
__device__ __forceinline__ void tcp_stage(uint32_t* xs, int T, int k0, int chunks, int cstride, V val,
                                          int tid = threadIdx.x, int nth = blockDim.x) {
    for (int i = tid; i < T * chunks * 8; i += nth) {
        const int r = i / (chunks * 8), rem = i - r * (chunks * 8);
        const int c = rem >> 3, j = rem & 7, e = 8 * (j >> 1) + 2 * (j & 1);
        const int k = k0 + c * 32 + e;
        put_hilo<SWZ>(xs, cstride, r, c, j, val(r, k), val(r, k + 1), val(r, k + 4), val(r, k + 5));
    }
}

// gemv_jobs: up to three NVFP4 products sharing x (q/k/v, gate/up) in one launch of either
// tensor-core GEMV; GEMV_JOB_PARAMS(j) are the entry points' per-job parameters and
// GEMV_JOBS_INIT builds the struct from them.
#define GEMV_JOBS 3
struct gemv_jobs {
    float* out[GEMV_JOBS];
    const uint8_t* packed[GEMV_JOBS];
    const uint8_t* scales[GEMV_JOBS];
    float gscale[GEMV_JOBS];  // tensor scale × 2^14
    int N[GEMV_JOBS];
    int tiles[GEMV_JOBS];  // ceil(N / 16)
    int njobs;
};
#define GEMV_JOB_PARAMS(j) float *out##j, const uint8_t *p##j, const uint8_t *s##j, float g##j, int n##j
#define GEMV_JOBS_INIT                                                           \
    {{out0, out1, out2}, {p0, p1, p2}, {s0, s1, s2}, {g0, g1, g2}, {n0, n1, n2}, \
     {(n0 + 15) / 16, (n1 + 15) / 16, (n2 + 15) / 16}, njobs}
