// Latency probes (test-only: TestFiguresLaunchChain, probe_test.go; the engine launches none of
// these). Batch-1 decode is a chain of ~5 dependent steps a layer, 180 a token; each step's
// fixed part decides how close a token can come to its bytes' time. These kernels time the
// bare dependency mechanisms with no work behind them: a kernel boundary (plain and
// programmatic dependent launch), a grid-wide barrier inside one resident kernel, and one block
// handing a flag to the next inside one resident kernel.
#include "common.cuh"

// chain_link is one link of a chain of dependent kernels: every block's thread 0 reads what the
// previous link wrote (after pdl_wait: a no-op unless launched as a programmatic dependent), and
// block 0 writes it plus one for the next link. cell[n] after n links from cell[0] = 0 is n.
extern "C" __global__ void chain_link(int* cell, int i) {
    pdl_trigger();
    pdl_wait();
    if (threadIdx.x == 0) {
        const int v = __ldcg(cell + i);
        if (blockIdx.x == 0) cell[i + 1] = v + 1;
    }
}

__device__ __forceinline__ unsigned ld_acquire_u32(const unsigned* p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void st_release_u32(unsigned* p, unsigned v) {
    asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// barrier_rounds passes `rounds` grid-wide barriers (all blocks resident: a cooperative launch).
// The barrier is a counter and a generation: each block's thread 0 adds one to the counter; the
// last arriver resets it and releases the next generation, the others poll the generation.
// bar[2] counts the rounds that completed (a check that every barrier was passed).
extern "C" __global__ void barrier_rounds(unsigned* bar, int rounds) {
    for (int r = 0; r < rounds; r++) {
        __syncthreads();
        if (threadIdx.x == 0) {
            const unsigned g = ld_acquire_u32(bar + 1);
            if (atomicAdd(bar, 1u) == gridDim.x - 1) {
                atomicExch(bar, 0u);
                atomicAdd(bar + 2, 1u);
                st_release_u32(bar + 1, g + 1);
            } else {
                while (ld_acquire_u32(bar + 1) == g) {
                }
            }
        }
        __syncthreads();
    }
}

// flag_relay passes a flag around the blocks `rounds` times: in round r block r % gridDim.x
// waits until the flag reads base + r and stores base + r + 1; every other block's thread 0
// waits until the flag has reached base + r before its next round (a late block may find it
// further on), so all blocks poll the one word as a megakernel's consumers would. A round is one
// block-to-block signal.
extern "C" __global__ void flag_relay(unsigned* flag, unsigned base, int rounds) {
    if (threadIdx.x != 0) return;
    for (int r = 0; r < rounds; r++) {
        const unsigned want = base + (unsigned)r;
        while ((int)(ld_acquire_u32(flag) - want) < 0) {
        }
        if ((int)blockIdx.x == r % (int)gridDim.x) st_release_u32(flag, want + 1u);
    }
}
