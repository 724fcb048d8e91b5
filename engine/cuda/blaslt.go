//go:build cuda

package cuda

// cuBLASLt through dlopen, like the driver (driver.go): libcublasLt.so.13, .12 or .11 is opened
// at run time, so a binary built with the cuda tag needs no cuBLAS at build time and still runs
// (MatMul on the SIMT kernels) where the library is missing. The few types and enum values used
// are declared here with their cublasLt.h / cublas_api.h / library_types.h values, which are
// part of the ABI and unchanged from CUDA 11 to 13; the handles are opaque pointers and the
// descriptors are created by the library, so their sizes do not matter. Only
// cublasLtMatmulAlgo_t (8 × uint64) and cublasLtMatmulHeuristicResult_t are laid out here.

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int qglt_status;          // cublasStatus_t
typedef void* qglt_handle;        // cublasLtHandle_t
typedef void* qglt_desc;          // cublasLtMatmulDesc_t
typedef void* qglt_layout;        // cublasLtMatrixLayout_t
typedef void* qglt_pref;          // cublasLtMatmulPreference_t
typedef struct { uint64_t data[8]; } qglt_algo; // cublasLtMatmulAlgo_t
typedef struct {                  // cublasLtMatmulHeuristicResult_t
	qglt_algo algo;
	size_t workspaceSize;
	qglt_status state;
	float wavesCount;
	int reserved[4];
} qglt_heuristic;

enum {
	QGLT_SUCCESS = 0,              // CUBLAS_STATUS_SUCCESS
	QGLT_NOT_SUPPORTED = 15,       // CUBLAS_STATUS_NOT_SUPPORTED
	QGLT_COMPUTE_32F = 68,         // CUBLAS_COMPUTE_32F
	QGLT_R_32F = 0,                // CUDA_R_32F
	QGLT_R_16BF = 14,              // CUDA_R_16BF
	QGLT_OP_N = 0,                 // CUBLAS_OP_N
	QGLT_OP_T = 1,                 // CUBLAS_OP_T
	QGLT_DESC_TRANSA = 3,          // CUBLASLT_MATMUL_DESC_TRANSA (int32_t)
	QGLT_DESC_TRANSB = 4,          // CUBLASLT_MATMUL_DESC_TRANSB (int32_t)
	QGLT_PREF_MAX_WORKSPACE = 1,   // CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES (uint64_t)
	QGLT_PREF_ALIGN_A = 5,         // CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES (uint32_t); B 6, C 7, D 8
};

static qglt_status (*p_create)(qglt_handle*);
static qglt_status (*p_destroy)(qglt_handle);
static size_t (*p_version)(void);
static const char* (*p_status_name)(qglt_status);
static const char* (*p_status_string)(qglt_status);
static qglt_status (*p_desc_create)(qglt_desc*, int, int);
static qglt_status (*p_desc_set)(qglt_desc, int, const void*, size_t);
static qglt_status (*p_desc_destroy)(qglt_desc);
static qglt_status (*p_layout_create)(qglt_layout*, int, uint64_t, uint64_t, int64_t);
static qglt_status (*p_layout_destroy)(qglt_layout);
static qglt_status (*p_pref_create)(qglt_pref*);
static qglt_status (*p_pref_set)(qglt_pref, int, const void*, size_t);
static qglt_status (*p_pref_destroy)(qglt_pref);
static qglt_status (*p_heuristic)(qglt_handle, qglt_desc, qglt_layout, qglt_layout, qglt_layout, qglt_layout,
                                  qglt_pref, int, qglt_heuristic*, int*);
static qglt_status (*p_matmul)(qglt_handle, qglt_desc, const void*, const void*, qglt_layout, const void*, qglt_layout,
                               const void*, const void*, qglt_layout, void*, qglt_layout, const qglt_algo*, void*, size_t,
                               void*);

static char qglt_err[1024];
static char qglt_path[512];

// qglt_load opens cuBLASLt (13, 12, 11; by name through the loader's path, then in the usual
// CUDA install directories) and resolves the symbols; it returns NULL or a message.
static const char* qglt_load(void) {
	const char* names[] = {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11"};
	const char* dirs[] = {"", "/usr/local/cuda/lib64/", "/usr/local/cuda/targets/x86_64-linux/lib/",
	                      "/usr/local/cuda/targets/sbsa-linux/lib/"};
	void* lib = NULL;
	char tried[768] = "";
	for (int d = 0; d < 4 && lib == NULL; d++)
		for (int i = 0; i < 3 && lib == NULL; i++) {
			snprintf(qglt_path, sizeof qglt_path, "%s%s", dirs[d], names[i]);
			lib = dlopen(qglt_path, RTLD_NOW | RTLD_LOCAL);
			if (lib == NULL && d == 0) {
				const char* e = dlerror();
				if (i == 0 && e != NULL) snprintf(tried, sizeof tried, "%s", e);
			}
		}
	if (lib == NULL) {
		snprintf(qglt_err, sizeof qglt_err,
		         "cannot load libcublasLt.so.13/.12/.11 (from LD_LIBRARY_PATH or /usr/local/cuda/lib64): %s",
		         tried[0] ? tried : "not found");
		return qglt_err;
	}
#define QGLT_SYM(var, name) \
	*(void**)(&var) = dlsym(lib, name); \
	if (var == NULL) { snprintf(qglt_err, sizeof qglt_err, "%s lacks %s", qglt_path, name); return qglt_err; }
	QGLT_SYM(p_create, "cublasLtCreate")
	QGLT_SYM(p_destroy, "cublasLtDestroy")
	QGLT_SYM(p_version, "cublasLtGetVersion")
	QGLT_SYM(p_desc_create, "cublasLtMatmulDescCreate")
	QGLT_SYM(p_desc_set, "cublasLtMatmulDescSetAttribute")
	QGLT_SYM(p_desc_destroy, "cublasLtMatmulDescDestroy")
	QGLT_SYM(p_layout_create, "cublasLtMatrixLayoutCreate")
	QGLT_SYM(p_layout_destroy, "cublasLtMatrixLayoutDestroy")
	QGLT_SYM(p_pref_create, "cublasLtMatmulPreferenceCreate")
	QGLT_SYM(p_pref_set, "cublasLtMatmulPreferenceSetAttribute")
	QGLT_SYM(p_pref_destroy, "cublasLtMatmulPreferenceDestroy")
	QGLT_SYM(p_heuristic, "cublasLtMatmulAlgoGetHeuristic")
	QGLT_SYM(p_matmul, "cublasLtMatmul")
	// Optional: error names (cuBLASLt ≥ 11.4).
	*(void**)(&p_status_name) = dlsym(lib, "cublasLtGetStatusName");
	*(void**)(&p_status_string) = dlsym(lib, "cublasLtGetStatusString");
	return NULL;
}

static const char* qglt_libpath(void) { return qglt_path; }
static size_t qglt_version(void) { return p_version(); }
static const char* qglt_status_name(qglt_status s) { return p_status_name ? p_status_name(s) : NULL; }
static const char* qglt_status_string(qglt_status s) { return p_status_string ? p_status_string(s) : NULL; }
static qglt_status qglt_create(qglt_handle* h) { return p_create(h); }
static qglt_status qglt_destroy(qglt_handle h) { return p_destroy(h); }

// QGLT_MAX_ALGOS bounds the heuristic's candidates kept per plan (best first).
#define QGLT_MAX_ALGOS 8

// qglt_plan is one product's descriptors, the heuristic's candidate algorithms (best first, as
// it ranks them) and the one in use (pick; 0 unless a tuner chose another).
typedef struct {
	qglt_desc desc;
	qglt_layout a, b, c;
	qglt_algo algos[QGLT_MAX_ALGOS];
	int nalgos, pick;
} qglt_plan;

static void qglt_plan_free(qglt_plan* p) {
	if (p == NULL) return;
	if (p->a) p_layout_destroy(p->a);
	if (p->b) p_layout_destroy(p->b);
	if (p->c) p_layout_destroy(p->c);
	if (p->desc) p_desc_destroy(p->desc);
	free(p);
}

// qglt_plan_new describes D[m, n] (fp32, or bf16 when dbf16; column-major, leading dimension
// ldc; C = D) =
// alpha · op(A) · op(B) + beta · C with bf16 A (stored k×m when transa, else m×k; leading
// dimension lda) and bf16 B (stored n×k when transb, else k×n; ldb), fp32 compute and scale,
// asks the heuristic for its best want (≤ QGLT_MAX_ALGOS) algorithms within ws bytes of
// workspace and returns the plan in *out. align[0..2] are the alignments in bytes (powers of two, at most 256) that the
// pointers of A, B and C = D will have: algorithms that need more are excluded. *stage names the call that failed; a status of QGLT_NOT_SUPPORTED with *stage
// "heuristic" means no algorithm fits.
static qglt_status qglt_plan_new(qglt_handle h, int transa, int transb, uint64_t m, uint64_t n, uint64_t k,
                                 int64_t lda, int64_t ldb, int64_t ldc, int dbf16, uint64_t ws, const uint32_t* align,
                                 int want, qglt_plan** out, const char** stage) {
	qglt_status s;
	qglt_pref pref = NULL;
	qglt_plan* p = (qglt_plan*)calloc(1, sizeof *p);
	*out = NULL;
	if (p == NULL) { *stage = "calloc"; return 3; }
	int32_t ta = transa ? QGLT_OP_T : QGLT_OP_N, tb = transb ? QGLT_OP_T : QGLT_OP_N;
#define QGLT_TRY(call, name) if ((s = (call)) != QGLT_SUCCESS) { *stage = name; goto fail; }
	QGLT_TRY(p_desc_create(&p->desc, QGLT_COMPUTE_32F, QGLT_R_32F), "cublasLtMatmulDescCreate")
	QGLT_TRY(p_desc_set(p->desc, QGLT_DESC_TRANSA, &ta, sizeof ta), "cublasLtMatmulDescSetAttribute(TRANSA)")
	QGLT_TRY(p_desc_set(p->desc, QGLT_DESC_TRANSB, &tb, sizeof tb), "cublasLtMatmulDescSetAttribute(TRANSB)")
	QGLT_TRY(p_layout_create(&p->a, QGLT_R_16BF, transa ? k : m, transa ? m : k, lda), "cublasLtMatrixLayoutCreate(A)")
	QGLT_TRY(p_layout_create(&p->b, QGLT_R_16BF, transb ? n : k, transb ? k : n, ldb), "cublasLtMatrixLayoutCreate(B)")
	QGLT_TRY(p_layout_create(&p->c, dbf16 ? QGLT_R_16BF : QGLT_R_32F, m, n, ldc), "cublasLtMatrixLayoutCreate(C)")
	QGLT_TRY(p_pref_create(&pref), "cublasLtMatmulPreferenceCreate")
	QGLT_TRY(p_pref_set(pref, QGLT_PREF_MAX_WORKSPACE, &ws, sizeof ws), "cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)")
	for (int i = 0; i < 4; i++) {
		uint32_t al = align[i < 3 ? i : 2];
		QGLT_TRY(p_pref_set(pref, QGLT_PREF_ALIGN_A + i, &al, sizeof al), "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT)")
	}
	qglt_heuristic res[QGLT_MAX_ALGOS];
	int found = 0;
	if (want < 1) want = 1;
	if (want > QGLT_MAX_ALGOS) want = QGLT_MAX_ALGOS;
	memset(res, 0, sizeof res);
	QGLT_TRY(p_heuristic(h, p->desc, p->a, p->b, p->c, p->c, pref, want, res, &found), "cublasLtMatmulAlgoGetHeuristic")
	for (int i = 0; i < found && i < want; i++)
		if (res[i].state == QGLT_SUCCESS) p->algos[p->nalgos++] = res[i].algo;
	if (p->nalgos < 1) { s = QGLT_NOT_SUPPORTED; *stage = "heuristic"; goto fail; }
	p_pref_destroy(pref);
	*out = p;
	return QGLT_SUCCESS;
fail:
	if (pref) p_pref_destroy(pref);
	qglt_plan_free(p);
	return s;
}

// qglt_run runs a plan on the legacy default (NULL) stream; the kernels' blocking stream
// (driver.go) synchronises with it both ways, so products and kernels stay in issue order.
static qglt_status qglt_run(qglt_handle h, qglt_plan* p, float alpha, float beta, uintptr_t a, uintptr_t b, uintptr_t d,
                            uintptr_t ws, size_t wsBytes) {
	return p_matmul(h, p->desc, &alpha, (const void*)a, p->a, (const void*)b, p->b, &beta, (const void*)d, p->c,
	                (void*)d, p->c, &p->algos[p->pick], (void*)ws, wsBytes, NULL);
}
*/
import "C"

import (
	"fmt"
	"sync"
)

// ltError is a failed cuBLASLt call: the call and its cublasStatus_t.
type ltError struct {
	op     string
	status int
}

func (e *ltError) Error() string {
	name, desc := "", ""
	if s := C.qglt_status_name(C.qglt_status(e.status)); s != nil {
		name = C.GoString(s)
	}
	if s := C.qglt_status_string(C.qglt_status(e.status)); s != nil {
		desc = C.GoString(s)
	}
	switch {
	case name != "" && desc != "":
		return fmt.Sprintf("%s: %s (%s)", e.op, name, desc)
	case name != "":
		return fmt.Sprintf("%s: %s", e.op, name)
	}
	return fmt.Sprintf("%s: cuBLAS status %d", e.op, e.status)
}

var cublasLt struct {
	once    sync.Once
	err     error
	path    string
	version int
}

// loadCublasLt opens cuBLASLt once per process; the error says what is missing.
func loadCublasLt() error {
	cublasLt.once.Do(func() {
		if msg := C.qglt_load(); msg != nil {
			cublasLt.err = fmt.Errorf("cuda: %s", C.GoString(msg))
			return
		}
		cublasLt.path = C.GoString(C.qglt_libpath())
		cublasLt.version = int(C.qglt_version())
	})
	return cublasLt.err
}

// ltHandle is a cuBLASLt handle (one per backend, used on its owner goroutine).
type ltHandle struct{ h C.qglt_handle }

func newLtHandle() (ltHandle, error) {
	var h C.qglt_handle
	if s := C.qglt_create(&h); s != C.QGLT_SUCCESS {
		return ltHandle{}, &ltError{"cublasLtCreate", int(s)}
	}
	return ltHandle{h}, nil
}

func (h ltHandle) destroy() {
	if h.h != nil {
		C.qglt_destroy(h.h)
	}
}

// ltPlan is a described product with its candidate algorithms and the one in use (C memory,
// freed by free); name labels its launches in kernel times.
type ltPlan struct {
	p    *C.qglt_plan
	name string
	uses int // launches so far (gemm_tune.go tunes at gemmTuneAtUse)
}

// ltShape is a product in cuBLAS's column-major terms: D[m, n] = alpha·op(A)·op(B) + beta·D,
// A and B bf16, D fp32 (bf16 when dBF16: computed in fp32, rounded once); op(A) is m×k (A stored k×m when transA), op(B) k×n (B stored n×k
// when transB); lda, ldb, ldd are leading dimensions (elements between columns).
type ltShape struct {
	transA, transB bool
	m, n, k        int
	lda, ldb, ldd  int
	dBF16          bool // D (and C) bf16: a bf16 parameter gradient (planDW)
	// alignA, alignB, alignD: the alignment in bytes of the pointers the plan will be run with
	// (a power of two, at most 256; see ptrAlign).
	alignA, alignB, alignD int
}

// ops is the transposition pair in cuBLAS's letters ("TN" for transA only).
func (s ltShape) ops() string {
	l := func(t bool) string {
		if t {
			return "T"
		}
		return "N"
	}
	return l(s.transA) + l(s.transB)
}

func (s ltShape) String() string {
	d := ""
	if s.dBF16 {
		d = " D bf16"
	}
	return fmt.Sprintf("%s m=%d n=%d k=%d lda=%d ldb=%d ldd=%d align %d/%d/%d%s", s.ops(), s.m, s.n, s.k,
		s.lda, s.ldb, s.ldd, s.alignA, s.alignB, s.alignD, d)
}

// ltCandidates is how many algorithms a plan asks the heuristic for (QGLT_MAX_ALGOS at most);
// the first is used unless the plan is tuned (figures).
const ltCandidates = 8

// label names the product in kernel times: "cublasLt" with the ops and m×n×k, which is enough
// to tell a layer's products apart and to compute their FLOP rates.
func (s ltShape) label() string {
	return fmt.Sprintf("cublasLt %s %dx%dx%d", s.ops(), s.m, s.n, s.k)
}

// newLtPlan describes s and keeps the heuristic's best algorithms that need at most wsBytes of
// workspace, using the first.
func newLtPlan(h ltHandle, s ltShape, wsBytes int64) (*ltPlan, error) {
	b2i := func(b bool) C.int {
		if b {
			return 1
		}
		return 0
	}
	var p *C.qglt_plan
	var stage *C.char
	align := [3]C.uint32_t{C.uint32_t(s.alignA), C.uint32_t(s.alignB), C.uint32_t(s.alignD)}
	st := C.qglt_plan_new(h.h, b2i(s.transA), b2i(s.transB), C.uint64_t(s.m), C.uint64_t(s.n), C.uint64_t(s.k),
		C.int64_t(s.lda), C.int64_t(s.ldb), C.int64_t(s.ldd), b2i(s.dBF16), C.uint64_t(wsBytes), &align[0], ltCandidates, &p, &stage)
	if st != C.QGLT_SUCCESS {
		return nil, &ltError{C.GoString(stage) + " for " + s.String(), int(st)}
	}
	return &ltPlan{p: p, name: s.label()}, nil
}

func (p *ltPlan) free() { C.qglt_plan_free(p.p) }

// candidates is the number of algorithms the heuristic offered (at least 1).
func (p *ltPlan) candidates() int { return int(p.p.nalgos) }

// use makes the plan run candidate i (0 = the heuristic's first choice).
func (p *ltPlan) use(i int) {
	if i >= 0 && i < p.candidates() {
		p.p.pick = C.int(i)
	}
}

// picked is the candidate in use.
func (p *ltPlan) picked() int { return int(p.p.pick) }

// run launches D = alpha·op(A)·op(B) + beta·D on the default stream (owner goroutine).
func (p *ltPlan) run(h ltHandle, alpha, beta float32, a, b, d devPtr, ws devPtr, wsBytes int64) error {
	if kt := activeKernelTimer; kt != nil {
		defer kt.aroundNamed(p.name)()
	}
	return p.runUntimed(h, alpha, beta, a, b, d, ws, wsBytes)
}

// runUntimed is run without the kernel timer (tuning's own launches).
func (p *ltPlan) runUntimed(h ltHandle, alpha, beta float32, a, b, d devPtr, ws devPtr, wsBytes int64) error {
	if s := C.qglt_run(h.h, p.p, C.float(alpha), C.float(beta), C.uintptr_t(a), C.uintptr_t(b), C.uintptr_t(d),
		C.uintptr_t(ws), C.size_t(wsBytes)); s != C.QGLT_SUCCESS {
		return &ltError{"cublasLtMatmul", int(s)}
	}
	return nil
}
