//go:build cuda

package cuda

// The CUDA driver API through dlopen: cuda.h supplies the types, libcuda.so.1 is opened at run
// time, so a binary built with the cuda tag starts (and its tests skip) on machines without the
// NVIDIA driver. The symbols looked up are the ABI names cuda.h maps the API to
// (cuMemAlloc → cuMemAlloc_v2, …), which every driver since CUDA 11 exports.

/*
#cgo LDFLAGS: -ldl
#include <cuda.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define QG_STR2(x) #x
#define QG_STR(x) QG_STR2(x)
#define QG_FUNCS(X) \
	X(cuInit) X(cuDriverGetVersion) X(cuGetErrorName) X(cuGetErrorString) \
	X(cuDeviceGetCount) X(cuDeviceGet) X(cuDeviceGetName) X(cuDeviceTotalMem) X(cuDeviceGetAttribute) \
	X(cuDevicePrimaryCtxRetain) X(cuDevicePrimaryCtxRelease) X(cuCtxSetCurrent) X(cuCtxSynchronize) \
	X(cuMemAlloc) X(cuMemFree) X(cuMemGetInfo) X(cuMemcpyHtoD) X(cuMemcpyDtoH) X(cuMemcpyDtoD) X(cuMemsetD8) \
	X(cuModuleLoadData) X(cuModuleUnload) X(cuModuleGetFunction) X(cuLaunchKernel) \
	X(cuEventCreate) X(cuEventRecord) X(cuEventSynchronize) X(cuEventElapsedTime) X(cuEventDestroy) \
	X(cuOccupancyMaxActiveBlocksPerMultiprocessor) X(cuFuncSetAttribute) X(cuStreamCreate)

#define QG_DECL(n) static __typeof__(&n) p_##n;
QG_FUNCS(QG_DECL)

static char qg_err[512];

// qg_load opens libcuda and resolves every symbol; it returns NULL or a message.
static const char* qg_load(void) {
	const char* names[] = {"libcuda.so.1", "libcuda.so"};
	void* lib = NULL;
	for (int i = 0; i < 2 && lib == NULL; i++) lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
	if (lib == NULL) {
		const char* e = dlerror();
		snprintf(qg_err, sizeof qg_err, "cannot load the NVIDIA driver library libcuda.so.1: %s", e ? e : "not found");
		return qg_err;
	}
#define QG_LOAD(n) \
	p_##n = (__typeof__(p_##n))dlsym(lib, QG_STR(n)); \
	if (p_##n == NULL) { snprintf(qg_err, sizeof qg_err, "libcuda.so.1 lacks %s (driver too old?)", QG_STR(n)); return qg_err; }
	QG_FUNCS(QG_LOAD)
	return NULL;
}

static CUresult qg_cuInit(void) { return p_cuInit(0); }
static CUresult qg_cuDriverGetVersion(int* v) { return p_cuDriverGetVersion(v); }
static const char* qg_errname(CUresult r) {
	const char* s = NULL;
	if (p_cuGetErrorName == NULL || p_cuGetErrorName(r, &s) != CUDA_SUCCESS) return NULL;
	return s;
}
static const char* qg_errstring(CUresult r) {
	const char* s = NULL;
	if (p_cuGetErrorString == NULL || p_cuGetErrorString(r, &s) != CUDA_SUCCESS) return NULL;
	return s;
}
static CUresult qg_cuDeviceGetCount(int* n) { return p_cuDeviceGetCount(n); }
static CUresult qg_cuDeviceGet(CUdevice* d, int i) { return p_cuDeviceGet(d, i); }
static CUresult qg_cuDeviceGetName(char* s, int n, CUdevice d) { return p_cuDeviceGetName(s, n, d); }
static CUresult qg_cuDeviceTotalMem(size_t* b, CUdevice d) { return p_cuDeviceTotalMem(b, d); }
static CUresult qg_cuDeviceGetAttribute(int* v, int a, CUdevice d) { return p_cuDeviceGetAttribute(v, (CUdevice_attribute)a, d); }
static CUresult qg_cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice d) { return p_cuDevicePrimaryCtxRetain(c, d); }
static CUresult qg_cuDevicePrimaryCtxRelease(CUdevice d) { return p_cuDevicePrimaryCtxRelease(d); }
static CUresult qg_cuCtxSetCurrent(CUcontext c) { return p_cuCtxSetCurrent(c); }
static CUresult qg_cuCtxSynchronize(void) { return p_cuCtxSynchronize(); }
static CUresult qg_cuMemAlloc(CUdeviceptr* p, size_t n) { return p_cuMemAlloc(p, n); }
static CUresult qg_cuMemFree(CUdeviceptr p) { return p_cuMemFree(p); }
static CUresult qg_cuMemGetInfo(size_t* f, size_t* t) { return p_cuMemGetInfo(f, t); }
static CUresult qg_cuMemcpyHtoD(CUdeviceptr d, const void* s, size_t n) { return p_cuMemcpyHtoD(d, s, n); }
static CUresult qg_cuMemcpyDtoH(void* d, CUdeviceptr s, size_t n) { return p_cuMemcpyDtoH(d, s, n); }
static CUresult qg_cuMemcpyDtoD(CUdeviceptr d, CUdeviceptr s, size_t n) { return p_cuMemcpyDtoD(d, s, n); }
static CUresult qg_cuMemsetD8(CUdeviceptr d, unsigned char v, size_t n) { return p_cuMemsetD8(d, v, n); }
static CUresult qg_cuModuleLoadData(CUmodule* m, const void* img) { return p_cuModuleLoadData(m, img); }
static CUresult qg_cuModuleUnload(CUmodule m) { return p_cuModuleUnload(m); }
static CUresult qg_cuOccupancy(int* n, CUfunction f, int threads, size_t shmem) { return p_cuOccupancyMaxActiveBlocksPerMultiprocessor(n, f, threads, shmem); }
static CUresult qg_cuModuleGetFunction(CUfunction* f, CUmodule m, const char* name) { return p_cuModuleGetFunction(f, m, name); }
static CUresult qg_cuEventCreate(CUevent* e) { return p_cuEventCreate(e, CU_EVENT_DEFAULT); }
static CUresult qg_cuEventRecord(CUevent e) { return p_cuEventRecord(e, NULL); }
static CUresult qg_cuEventSynchronize(CUevent e) { return p_cuEventSynchronize(e); }
static CUresult qg_cuEventElapsedTime(float* ms, CUevent a, CUevent b) { return p_cuEventElapsedTime(ms, a, b); }
static CUresult qg_cuEventDestroy(CUevent e) { return p_cuEventDestroy(e); }

static CUresult qg_cuFuncSetAttribute(CUfunction f, int a, int v) { return p_cuFuncSetAttribute(f, (CUfunction_attribute)a, v); }

// Kernels go to one blocking stream per owner thread (qg_stream, created at setup on the
// backend's locked OS thread): blocking streams synchronise implicitly with the legacy default
// stream, so the copies, memsets, events and cuBLASLt calls still issued there stay ordered
// with the kernels exactly as before, while kernels may use programmatic dependent launch
// (sm_90), which needs a stream of its own.
static __thread CUstream qg_stream;
// qg_prev_dep: which chain of programmatic launches the last kernel on qg_stream belongs to, so
// that the next kernel of the same chain may overlap it. QG_CHAIN_DECODE: a launchDep kernel (one
// that calls pdl_trigger and writes no weights). QG_CHAIN_ADAMW: an AdamW batch launch (it writes
// weights, and waits for the launch before it at its end). A plain launch clears it, and neither
// chain follows the other: the decode GEMV requests weights before its pdl_wait, so it must never
// overlap a kernel that may write them.
#define QG_CHAIN_DECODE 1
#define QG_CHAIN_ADAMW 2
static __thread int qg_prev_dep;

static CUresult qg_stream_init(void) { return p_cuStreamCreate(&qg_stream, CU_STREAM_DEFAULT); }
static CUresult qg_event_record_stream(CUevent e) { return p_cuEventRecord(e, qg_stream); }

// qg_launch launches f on qg_stream; args holds n 8-byte slots, one per kernel parameter
// (4-byte parameters in the low half: little-endian).
static CUresult qg_launch(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                          unsigned shmem, void* args, int n) {
	void* ptrs[32];
	if (n < 0 || n > 32) return CUDA_ERROR_INVALID_VALUE;
	for (int i = 0; i < n; i++) ptrs[i] = (char*)args + 8 * (size_t)i;
	qg_prev_dep = 0;
	return p_cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shmem, qg_stream, ptrs, NULL);
}

// qg_launch_buf launches f on qg_stream with its parameters laid out in buf (size bytes, the
// kernel's parameter layout): for a kernel whose parameter is a struct larger than a slot.
static CUresult qg_launch_buf(CUfunction f, unsigned gx, unsigned bx, unsigned shmem, void* buf, size_t size) {
	void* extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, buf, CU_LAUNCH_PARAM_BUFFER_SIZE, &size, CU_LAUNCH_PARAM_END};
	qg_prev_dep = 0;
	return p_cuLaunchKernel(f, gx, 1, 1, bx, 1, 1, shmem, qg_stream, NULL, extra);
}

// Programmatic dependent launch: cuLaunchKernelEx (CUDA 12+ drivers) with the attribute
// CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION (6) lets the kernel start while the
// previous one on the stream finishes; the kernel waits for it with griddepcontrol.wait before
// reading its results. The structs mirror cuda.h's CUlaunchAttribute and CUlaunchConfig, which
// the CUDA 11.8 headers this builds against do not have; the symbol is looked up at run time.
typedef struct { int id; char pad[4]; union { char bytes[64]; int value; } val; } qg_launch_attr;
typedef struct {
	unsigned gx, gy, gz, bx, by, bz, shmem;
	CUstream stream;
	qg_launch_attr* attrs;
	unsigned nattrs;
} qg_launch_config;
typedef CUresult (*qg_launch_ex_fn)(const qg_launch_config*, CUfunction, void**, void**);
static qg_launch_ex_fn p_launch_ex;

static int qg_pdl_init(void) {
	void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
	if (lib == NULL) lib = dlopen("libcuda.so", RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
	if (lib != NULL) p_launch_ex = (qg_launch_ex_fn)dlsym(lib, "cuLaunchKernelEx");
	return p_launch_ex != NULL;
}

// qg_launch_chain launches f (its parameters as kernel-parameter pointers or as a buffer in
// extra) as a kernel of chain cls (QG_CHAIN_DECODE: a launchDep kernel; QG_CHAIN_ADAMW: a launch
// of an AdamWMany call): with programmatic serialization when pdl is set and the previous kernel
// was of the same chain, else plainly. *refused reports a PDL launch the driver rejected
// (nothing was launched then).
static CUresult qg_launch_chain(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                unsigned bz, unsigned shmem, void** params, void** extra, int pdl, int cls,
                                int* refused) {
	CUresult r;
	*refused = 0;
	if (pdl && qg_prev_dep == cls && p_launch_ex != NULL) {
		qg_launch_attr attr;
		memset(&attr, 0, sizeof attr);
		attr.id = 6;
		attr.val.value = 1;
		qg_launch_config cfg = {gx, gy, gz, bx, by, bz, shmem, qg_stream, &attr, 1};
		r = p_launch_ex(&cfg, f, params, extra);
		if (r != CUDA_SUCCESS) {
			*refused = 1;
			return r;
		}
	} else {
		r = p_cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shmem, qg_stream, params, extra);
	}
	qg_prev_dep = r == CUDA_SUCCESS ? cls : 0;
	return r;
}

// qg_launch_dep is qg_launch_chain with n 8-byte argument slots in args (qg_launch's layout).
static CUresult qg_launch_dep(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                              unsigned shmem, void* args, int n, int pdl, int cls, int* refused) {
	void* ptrs[32];
	*refused = 0;
	if (n < 0 || n > 32) return CUDA_ERROR_INVALID_VALUE;
	for (int i = 0; i < n; i++) ptrs[i] = (char*)args + 8 * (size_t)i;
	return qg_launch_chain(f, gx, gy, gz, bx, by, bz, shmem, ptrs, NULL, pdl, cls, refused);
}

// qg_launch_buf_chain is qg_launch_buf for a launch of an AdamWMany call: a programmatic dependent
// of the previous launch when chain is set and that launch was one too (QG_CHAIN_ADAMW).
static CUresult qg_launch_buf_chain(CUfunction f, unsigned gx, unsigned bx, void* buf, size_t size, int chain,
                                    int* refused) {
	void* extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, buf, CU_LAUNCH_PARAM_BUFFER_SIZE, &size, CU_LAUNCH_PARAM_END};
	return qg_launch_chain(f, gx, 1, 1, bx, 1, 1, 0, NULL, extra, chain, QG_CHAIN_ADAMW, refused);
}

// qg_launch_coop launches f with CU_LAUNCH_ATTRIBUTE_COOPERATIVE (2) through cuLaunchKernelEx:
// the driver refuses (CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE) unless every block can be
// resident at once, which a kernel with grid-wide barriers needs.
static CUresult qg_launch_coop(CUfunction f, unsigned gx, unsigned bx, unsigned shmem, void* args, int n) {
	void* ptrs[32];
	if (n < 0 || n > 32) return CUDA_ERROR_INVALID_VALUE;
	if (p_launch_ex == NULL) return CUDA_ERROR_NOT_SUPPORTED;
	for (int i = 0; i < n; i++) ptrs[i] = (char*)args + 8 * (size_t)i;
	qg_launch_attr attr;
	memset(&attr, 0, sizeof attr);
	attr.id = 2;
	attr.val.value = 1;
	qg_launch_config cfg = {gx, 1, 1, bx, 1, 1, shmem, qg_stream, &attr, 1};
	qg_prev_dep = 0;
	return p_launch_ex(&cfg, f, ptrs, NULL);
}

// CUDA graphs (graph.go): stream capture of qg_stream, instantiation, replay. The entry points
// are looked up when first used, so a driver without them only loses graphs. Kernels recorded
// while qg_stream captures become the graph's nodes; a programmatic launch becomes a
// programmatic edge, so the first captured kernel must not be one (qg_prev_dep is cleared at
// both ends of a capture and after a replay).
typedef CUresult (*qg_begin_fn)(CUstream, CUstreamCaptureMode);
typedef CUresult (*qg_end_fn)(CUstream, CUgraph*);
typedef CUresult (*qg_inst_fn)(CUgraphExec*, CUgraph, unsigned long long);
typedef CUresult (*qg_launch_graph_fn)(CUgraphExec, CUstream);
typedef CUresult (*qg_exec_destroy_fn)(CUgraphExec);
typedef CUresult (*qg_graph_destroy_fn)(CUgraph);
typedef CUresult (*qg_graph_nodes_fn)(CUgraph, CUgraphNode*, size_t*);
static qg_begin_fn p_capture_begin;
static qg_end_fn p_capture_end;
static qg_inst_fn p_graph_inst;
static qg_launch_graph_fn p_graph_launch;
static qg_exec_destroy_fn p_exec_destroy;
static qg_graph_destroy_fn p_graph_destroy;
static qg_graph_nodes_fn p_graph_nodes;

static int qg_graph_init(void) {
	if (p_graph_launch != NULL) return 1;
	void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
	if (lib == NULL) lib = dlopen("libcuda.so", RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
	if (lib == NULL) return 0;
	p_capture_begin = (qg_begin_fn)dlsym(lib, "cuStreamBeginCapture_v2");
	p_capture_end = (qg_end_fn)dlsym(lib, "cuStreamEndCapture");
	p_graph_inst = (qg_inst_fn)dlsym(lib, "cuGraphInstantiateWithFlags");
	p_exec_destroy = (qg_exec_destroy_fn)dlsym(lib, "cuGraphExecDestroy");
	p_graph_destroy = (qg_graph_destroy_fn)dlsym(lib, "cuGraphDestroy");
	p_graph_nodes = (qg_graph_nodes_fn)dlsym(lib, "cuGraphGetNodes");
	qg_launch_graph_fn l = (qg_launch_graph_fn)dlsym(lib, "cuGraphLaunch");
	if (!p_capture_begin || !p_capture_end || !p_graph_inst || !p_exec_destroy || !p_graph_destroy || !p_graph_nodes || !l) return 0;
	p_graph_launch = l;
	return 1;
}

// qg_capture_begin puts qg_stream in (relaxed) capture mode: its launches are recorded, not run.
static CUresult qg_capture_begin(void) {
	qg_prev_dep = 0;
	return p_capture_begin(qg_stream, CU_STREAM_CAPTURE_MODE_RELAXED);
}

// qg_capture_end ends the capture and, when keep is set and capture succeeded, instantiates the
// recorded graph into *exec (with its node count in *nodes); the graph itself is freed either way.
static CUresult qg_capture_end(int keep, CUgraphExec* exec, size_t* nodes) {
	CUgraph g = NULL;
	qg_prev_dep = 0;
	CUresult r = p_capture_end(qg_stream, &g);
	if (r != CUDA_SUCCESS || !keep) {
		if (g != NULL) p_graph_destroy(g);
		return r;
	}
	*nodes = 0;
	r = p_graph_nodes(g, NULL, nodes);
	if (r == CUDA_SUCCESS) r = p_graph_inst(exec, g, 0);
	p_graph_destroy(g);
	return r;
}

static CUresult qg_graph_replay(CUgraphExec exec) {
	qg_prev_dep = 0;
	return p_graph_launch(exec, qg_stream);
}

static CUresult qg_graph_free(CUgraphExec exec) { return p_exec_destroy(exec); }

// qg_profiler starts (on) or stops profiling (cuProfilerStart/Stop, looked up when first used):
// with `ncu --profile-from-start off` only the kernels between the two are profiled.
static CUresult qg_profiler(int on) {
	typedef CUresult (*fn)(void);
	void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
	if (lib == NULL) return CUDA_ERROR_NOT_INITIALIZED;
	fn f = (fn)dlsym(lib, on ? "cuProfilerStart" : "cuProfilerStop");
	return f == NULL ? CUDA_ERROR_NOT_FOUND : f();
}
*/
import "C"

import (
	"fmt"
	"math"
	"sync"
	"unsafe"
)

// devPtr is a device address.
type devPtr = C.CUdeviceptr

// DriverError is a failed CUDA driver call: the call's name and the driver's result code.
type DriverError struct {
	Op   string // the driver function, e.g. "cuMemAlloc"
	Code int    // the CUresult
}

// Error names the call, the code's symbolic name and the driver's description.
func (e *DriverError) Error() string {
	name, desc := "", ""
	if s := C.qg_errname(C.CUresult(e.Code)); s != nil {
		name = C.GoString(s)
	}
	if s := C.qg_errstring(C.CUresult(e.Code)); s != nil {
		desc = C.GoString(s)
	}
	switch {
	case name != "" && desc != "":
		return fmt.Sprintf("%s: %s (%s)", e.Op, name, desc)
	case name != "":
		return fmt.Sprintf("%s: %s", e.Op, name)
	}
	return fmt.Sprintf("%s: CUDA error %d", e.Op, e.Code)
}

// OutOfMemory reports whether the driver ran out of device memory.
func (e *DriverError) OutOfMemory() bool { return e.Code == int(C.CUDA_ERROR_OUT_OF_MEMORY) }

func check(op string, r C.CUresult) error {
	if r == C.CUDA_SUCCESS {
		return nil
	}
	return &DriverError{Op: op, Code: int(r)}
}

var driver struct {
	once sync.Once
	err  error
}

// loadDriver opens libcuda.so.1 and calls cuInit once per process.
func loadDriver() error {
	driver.once.Do(func() {
		if msg := C.qg_load(); msg != nil {
			driver.err = fmt.Errorf("cuda: %s", C.GoString(msg))
			return
		}
		if err := check("cuInit", C.qg_cuInit()); err != nil {
			driver.err = fmt.Errorf("cuda: no usable GPU: %w", err)
		}
	})
	return driver.err
}

func driverVersion() int {
	var v C.int
	if C.qg_cuDriverGetVersion(&v) != C.CUDA_SUCCESS {
		return 0
	}
	return int(v)
}

func deviceCount() (int, error) {
	var n C.int
	err := check("cuDeviceGetCount", C.qg_cuDeviceGetCount(&n))
	return int(n), err
}

type device = C.CUdevice

func getDevice(i int) (device, error) {
	var d C.CUdevice
	err := check("cuDeviceGet", C.qg_cuDeviceGet(&d, C.int(i)))
	return d, err
}

func deviceName(d device) (string, error) {
	var buf [256]C.char
	if err := check("cuDeviceGetName", C.qg_cuDeviceGetName(&buf[0], C.int(len(buf)), d)); err != nil {
		return "", err
	}
	return C.GoString(&buf[0]), nil
}

func deviceTotalMem(d device) (int64, error) {
	var n C.size_t
	err := check("cuDeviceTotalMem", C.qg_cuDeviceTotalMem(&n, d))
	return int64(n), err
}

// Device attributes used here.
const (
	attrSMCount   = int(C.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
	attrCCMajor   = int(C.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
	attrCCMinor   = int(C.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
	attrSmemOptin = int(C.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
)

func deviceAttribute(d device, a int) (int, error) {
	var v C.int
	err := check("cuDeviceGetAttribute", C.qg_cuDeviceGetAttribute(&v, C.int(a), d))
	return int(v), err
}

type cuContext = C.CUcontext

func retainPrimaryContext(d device) (cuContext, error) {
	var c C.CUcontext
	err := check("cuDevicePrimaryCtxRetain", C.qg_cuDevicePrimaryCtxRetain(&c, d))
	return c, err
}

func releasePrimaryContext(d device) error {
	return check("cuDevicePrimaryCtxRelease", C.qg_cuDevicePrimaryCtxRelease(d))
}

func setCurrent(c cuContext) error { return check("cuCtxSetCurrent", C.qg_cuCtxSetCurrent(c)) }

func synchronize() error { return check("cuCtxSynchronize", C.qg_cuCtxSynchronize()) }

func memAlloc(n int64) (devPtr, error) {
	var p C.CUdeviceptr
	err := check("cuMemAlloc", C.qg_cuMemAlloc(&p, C.size_t(n)))
	return p, err
}

func memFree(p devPtr) error { return check("cuMemFree", C.qg_cuMemFree(p)) }

func memGetInfo() (free, total int64, err error) {
	var f, t C.size_t
	err = check("cuMemGetInfo", C.qg_cuMemGetInfo(&f, &t))
	return int64(f), int64(t), err
}

// memcpyHtoD copies n bytes from host memory at src (Go memory holding no pointers) to dst.
func memcpyHtoD(dst devPtr, src unsafe.Pointer, n int64) error {
	if n == 0 {
		return nil
	}
	return check("cuMemcpyHtoD", C.qg_cuMemcpyHtoD(dst, src, C.size_t(n)))
}

// memcpyDtoH copies n bytes from src to host memory at dst; it waits for earlier work.
func memcpyDtoH(dst unsafe.Pointer, src devPtr, n int64) error {
	if n == 0 {
		return nil
	}
	return check("cuMemcpyDtoH", C.qg_cuMemcpyDtoH(dst, src, C.size_t(n)))
}

func memcpyDtoD(dst, src devPtr, n int64) error {
	if n == 0 {
		return nil
	}
	return check("cuMemcpyDtoD", C.qg_cuMemcpyDtoD(dst, src, C.size_t(n)))
}

func memsetD8(dst devPtr, v byte, n int64) error {
	return check("cuMemsetD8", C.qg_cuMemsetD8(dst, C.uchar(v), C.size_t(n)))
}

type module = C.CUmodule

// loadModule loads a kernel image into the current context: a cubin as it is, PTX JIT-compiled
// by the driver (the copy ends in a NUL, which PTX text needs and a cubin ignores).
func loadModule(image []byte) (module, error) {
	img := C.CBytes(append(append([]byte(nil), image...), 0))
	defer C.free(img)
	var m C.CUmodule
	err := check("cuModuleLoadData", C.qg_cuModuleLoadData(&m, img))
	return m, err
}

func unloadModule(m module) error { return check("cuModuleUnload", C.qg_cuModuleUnload(m)) }

type function = C.CUfunction

func moduleFunction(m module, name string) (function, error) {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	var f C.CUfunction
	if err := check("cuModuleGetFunction", C.qg_cuModuleGetFunction(&f, m, cs)); err != nil {
		return f, fmt.Errorf("kernel %s: %w", name, err)
	}
	return f, nil
}

// arg is one kernel parameter in its 8-byte slot.
type arg uint64

// occupancy is how many blocks of the given size of f fit on one SM at once.
func occupancy(f function, threads, shmem int) (int, error) {
	var n C.int
	if err := check("cuOccupancyMaxActiveBlocksPerMultiprocessor", C.qg_cuOccupancy(&n, f, C.int(threads), C.size_t(shmem))); err != nil {
		return 0, err
	}
	return int(n), nil
}

// setMaxDynamicShared lets f launch with up to n bytes of dynamic shared memory (above the
// 48 KB every kernel gets without asking).
func setMaxDynamicShared(f function, n int) error {
	return check("cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)", C.qg_cuFuncSetAttribute(f, C.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, C.int(n)))
}

func ptrArg(p devPtr) arg  { return arg(p) }
func intArg(v int) arg     { return arg(uint32(int32(v))) }
func f32Arg(v float32) arg { return arg(math.Float32bits(v)) }
func sizeArg(v int64) arg  { return arg(uint64(v)) }

// launch runs f on the owner thread's kernel stream with a grid of g blocks of bl threads.
func launch(f function, g, bl [3]int, shmem int, args ...arg) error {
	if len(args) == 0 {
		args = []arg{0}
	}
	if kt := activeKernelTimer; kt != nil {
		defer kt.around(f)()
	}
	return check("cuLaunchKernel", C.qg_launch(f, C.uint(g[0]), C.uint(g[1]), C.uint(g[2]),
		C.uint(bl[0]), C.uint(bl[1]), C.uint(bl[2]), C.uint(shmem), unsafe.Pointer(&args[0]), C.int(len(args))))
}

// launchBuf runs f on the owner thread's kernel stream, grid blocks of threads, with its
// parameters given as their bytes in the kernel's layout (a struct parameter larger than an
// 8-byte slot; at most 4 KB).
func launchBuf(f function, grid, threads int, params []byte) error {
	if len(params) == 0 || len(params) > 4096 {
		return fmt.Errorf("cuLaunchKernel: %d bytes of parameters (1 to 4096)", len(params))
	}
	if kt := activeKernelTimer; kt != nil {
		defer kt.around(f)()
	}
	return check("cuLaunchKernel", C.qg_launch_buf(f, C.uint(grid), C.uint(threads), 0, unsafe.Pointer(&params[0]), C.size_t(len(params))))
}

// launchBufChain is launchBuf for an AdamW batch launch (train.cu adamw_many: pdl_trigger at its
// start, pdl_wait at its end): with chain set and the previous launch one of these too, it is a
// programmatic dependent of that launch — its blocks start as the previous launch's blocks leave,
// and it ends only after that launch has. refused: the driver rejected the programmatic launch
// and nothing was launched.
func launchBufChain(f function, grid, threads int, params []byte, chain bool) (refused bool, err error) {
	if len(params) == 0 || len(params) > 4096 {
		return false, fmt.Errorf("cuLaunchKernelEx: %d bytes of parameters (1 to 4096)", len(params))
	}
	if kt := activeKernelTimer; kt != nil {
		defer kt.around(f)()
	}
	c, r := C.int(0), C.int(0)
	if chain {
		c = 1
	}
	err = check("cuLaunchKernelEx", C.qg_launch_buf_chain(f, C.uint(grid), C.uint(threads), unsafe.Pointer(&params[0]), C.size_t(len(params)), c, &r))
	return r != 0, err
}

// streamInit creates the calling (owner) thread's kernel stream; pdlInit reports whether the
// driver has cuLaunchKernelEx.
func streamInit() error { return check("cuStreamCreate", C.qg_stream_init()) }
func pdlInit() bool     { return C.qg_pdl_init() != 0 }

// launchDepKernel launches f, a kernel that starts with pdl_wait and pdl_trigger
// (common.cuh), overlapping the previous kernel (programmatic dependent launch) when pdl is set
// and that kernel was launched this way too. refused: the driver rejected the PDL launch and
// nothing was launched.
// graphExec is an instantiated CUDA graph (graph.go).
type graphExec = C.CUgraphExec

// graphInit reports whether the driver has the graph entry points graph.go uses.
func graphInit() bool { return C.qg_graph_init() != 0 }

// captureBegin starts recording the owner thread's kernel stream.
func captureBegin() error { return check("cuStreamBeginCapture", C.qg_capture_begin()) }

// captureEnd stops recording; with keep it instantiates what was recorded and reports its node
// count, else it discards it.
func captureEnd(keep bool) (graphExec, int, error) {
	var exec C.CUgraphExec
	var nodes C.size_t
	k := C.int(0)
	if keep {
		k = 1
	}
	err := check("cuStreamEndCapture/cuGraphInstantiate", C.qg_capture_end(k, &exec, &nodes))
	return exec, int(nodes), err
}

// graphReplay launches an instantiated graph on the owner thread's kernel stream.
func graphReplay(e graphExec) error { return check("cuGraphLaunch", C.qg_graph_replay(e)) }

// graphFree destroys an instantiated graph.
func graphFree(e graphExec) error { return check("cuGraphExecDestroy", C.qg_graph_free(e)) }

// profilerRange starts or stops the profiler's capture range (owner goroutine): tools run with
// capture from start off (ncu --profile-from-start off) then see only what lies between.
func profilerRange(on bool) error {
	v := C.int(0)
	if on {
		v = 1
	}
	return check("cuProfilerStart/Stop", C.qg_profiler(v))
}

func launchDepKernel(f function, g, bl [3]int, shmem int, pdl bool, args ...arg) (refused bool, err error) {
	return launchChained(f, g, bl, shmem, pdl, C.QG_CHAIN_DECODE, args)
}

// launchAdamKernel launches an AdamW kernel of an AdamWMany call (train.cu: pdl_trigger at its
// start, pdl_wait at its end) as launchBufChain does, its parameters as argument slots.
func launchAdamKernel(f function, grid, threads, shmem int, chain bool, args ...arg) (refused bool, err error) {
	return launchChained(f, [3]int{grid, 1, 1}, [3]int{threads, 1, 1}, shmem, chain, C.QG_CHAIN_ADAMW, args)
}

// launchChained launches f as a kernel of chain cls (driver.go qg_launch_chain): a programmatic
// dependent of the previous launch when pdl is set and that launch was of the same chain.
func launchChained(f function, g, bl [3]int, shmem int, pdl bool, cls C.int, args []arg) (refused bool, err error) {
	var r C.int
	p := C.int(0)
	if pdl {
		p = 1
	}
	if kt := activeKernelTimer; kt != nil {
		defer kt.around(f)()
	}
	err = check("cuLaunchKernelEx", C.qg_launch_dep(f, C.uint(g[0]), C.uint(g[1]), C.uint(g[2]),
		C.uint(bl[0]), C.uint(bl[1]), C.uint(bl[2]), C.uint(shmem), unsafe.Pointer(&args[0]), C.int(len(args)), p, cls, &r))
	return r != 0, err
}

// launchCooperative launches f with g blocks of bl threads, all resident at once (the driver
// refuses a grid that cannot be), on the owner thread's kernel stream; needs pdlInit's
// cuLaunchKernelEx.
func launchCooperative(f function, g, bl, shmem int, args ...arg) error {
	if kt := activeKernelTimer; kt != nil {
		defer kt.around(f)()
	}
	return check("cuLaunchKernelEx(cooperative)", C.qg_launch_coop(f, C.uint(g), C.uint(bl), C.uint(shmem), unsafe.Pointer(&args[0]), C.int(len(args))))
}

type event = C.CUevent

func eventCreate() (event, error) {
	var e C.CUevent
	err := check("cuEventCreate", C.qg_cuEventCreate(&e))
	return e, err
}

func eventRecord(e event) error { return check("cuEventRecord", C.qg_cuEventRecord(e)) }

// eventRecordStream records e on the owner thread's kernel stream (the kernel timer's events).
func eventRecordStream(e event) error { return check("cuEventRecord", C.qg_event_record_stream(e)) }
func eventSynchronize(e event) error  { return check("cuEventSynchronize", C.qg_cuEventSynchronize(e)) }
func eventDestroy(e event) error      { return check("cuEventDestroy", C.qg_cuEventDestroy(e)) }

func eventElapsed(a, b event) (float64, error) {
	var ms C.float
	err := check("cuEventElapsedTime", C.qg_cuEventElapsedTime(&ms, a, b))
	return float64(ms), err
}
