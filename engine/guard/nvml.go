//go:build linux && cgo

package guard

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// The few NVML declarations the guard needs, written from NVML's documented ABI so that no
// header or library is needed at build time: return codes are ints, devices opaque pointers.
typedef int qg_ret;
typedef void *qg_dev;
typedef struct { unsigned long long total, free, used; } qg_mem_v1;
// nvmlProcessInfo_v1_t: 16 bytes.
typedef struct { unsigned int pid; unsigned long long used; } qg_proc_v1;
// nvmlProcessInfo_v2_t, also what the _v3 entry point fills: 24 bytes.
typedef struct { unsigned int pid; unsigned long long used; unsigned int gi, ci; } qg_proc_v2;

static void *qg_lib;
static qg_ret (*qg_init)(void);
static qg_ret (*qg_shutdown)(void);
static const char *(*qg_errstr)(qg_ret);
static qg_ret (*qg_count)(unsigned int *);
static qg_ret (*qg_handle)(unsigned int, qg_dev *);
static qg_ret (*qg_meminfo)(qg_dev, qg_mem_v1 *);
static qg_ret (*qg_name)(qg_dev, char *, unsigned int);
static qg_ret (*qg_procs)(qg_dev, unsigned int *, void *);
static int qg_procs_stride;
static const char *qg_procs_symbol = "";

static void *qg_sym2(const char *a, const char *b) {
	void *p = dlsym(qg_lib, a);
	if (!p && b) p = dlsym(qg_lib, b);
	return p;
}

// qg_load opens the library once. 0: loaded; 1: library not found; 2: a required symbol is
// missing. err receives the loader's message.
static int qg_load(const char *name, char *err, int n) {
	if (qg_lib) return 0;
	void *h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		const char *e = dlerror();
		snprintf(err, n, "%s", e ? e : "dlopen failed");
		return 1;
	}
	qg_lib = h;
	qg_init = (qg_ret (*)(void))qg_sym2("nvmlInit_v2", "nvmlInit");
	qg_shutdown = (qg_ret (*)(void))qg_sym2("nvmlShutdown", 0);
	qg_errstr = (const char *(*)(qg_ret))qg_sym2("nvmlErrorString", 0);
	qg_count = (qg_ret (*)(unsigned int *))qg_sym2("nvmlDeviceGetCount_v2", "nvmlDeviceGetCount");
	qg_handle = (qg_ret (*)(unsigned int, qg_dev *))qg_sym2("nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetHandleByIndex");
	qg_meminfo = (qg_ret (*)(qg_dev, qg_mem_v1 *))qg_sym2("nvmlDeviceGetMemoryInfo", 0);
	qg_name = (qg_ret (*)(qg_dev, char *, unsigned int))qg_sym2("nvmlDeviceGetName", 0);
	void *p;
	if ((p = dlsym(qg_lib, "nvmlDeviceGetComputeRunningProcesses_v3"))) {
		qg_procs_symbol = "nvmlDeviceGetComputeRunningProcesses_v3";
		qg_procs_stride = sizeof(qg_proc_v2);
	} else if ((p = dlsym(qg_lib, "nvmlDeviceGetComputeRunningProcesses_v2"))) {
		qg_procs_symbol = "nvmlDeviceGetComputeRunningProcesses_v2";
		qg_procs_stride = sizeof(qg_proc_v2);
	} else if ((p = dlsym(qg_lib, "nvmlDeviceGetComputeRunningProcesses"))) {
		qg_procs_symbol = "nvmlDeviceGetComputeRunningProcesses";
		qg_procs_stride = sizeof(qg_proc_v1);
	}
	qg_procs = (qg_ret (*)(qg_dev, unsigned int *, void *))p;
	const char *missing = 0;
	if (!qg_init) missing = "nvmlInit_v2";
	else if (!qg_shutdown) missing = "nvmlShutdown";
	else if (!qg_count) missing = "nvmlDeviceGetCount_v2";
	else if (!qg_handle) missing = "nvmlDeviceGetHandleByIndex_v2";
	else if (!qg_meminfo) missing = "nvmlDeviceGetMemoryInfo";
	if (missing) {
		snprintf(err, n, "symbol %s not found", missing);
		dlclose(qg_lib);
		qg_lib = 0;
		return 2;
	}
	return 0;
}

static const char *qg_error_string(qg_ret r) {
	if (qg_errstr) return qg_errstr(r);
	return "unknown NVML error";
}
static qg_ret qg_do_init(void) { return qg_init(); }
static qg_ret qg_do_shutdown(void) { return qg_shutdown(); }
static qg_ret qg_do_count(unsigned int *n) { return qg_count(n); }
static qg_ret qg_do_handle(unsigned int i, qg_dev *d) { return qg_handle(i, d); }
static qg_ret qg_do_meminfo(qg_dev d, unsigned long long *total, unsigned long long *used) {
	qg_mem_v1 m;
	memset(&m, 0, sizeof m);
	qg_ret r = qg_meminfo(d, &m);
	*total = m.total;
	*used = m.used;
	return r;
}
static qg_ret qg_do_name(qg_dev d, char *buf, unsigned int n) {
	if (!qg_name) return 13; // NVML_ERROR_FUNCTION_NOT_FOUND
	return qg_name(d, buf, n);
}
static int qg_have_procs(void) { return qg_procs != 0; }
static const char *qg_procs_sym(void) { return qg_procs_symbol; }

// qg_do_procs lists up to *n compute processes into pids/mem; on return *n is the number
// listed, or the number needed when the result is NVML_ERROR_INSUFFICIENT_SIZE.
static qg_ret qg_do_procs(qg_dev d, unsigned int *n, unsigned int *pids, unsigned long long *mem) {
	unsigned int cap = *n;
	char *buf = calloc(cap ? cap : 1, qg_procs_stride);
	if (!buf) return 999;
	qg_ret r = qg_procs(d, n, buf);
	if (r == 0) {
		unsigned int k = *n < cap ? *n : cap;
		for (unsigned int i = 0; i < k; i++) {
			if (qg_procs_stride == sizeof(qg_proc_v1)) {
				qg_proc_v1 *p = (qg_proc_v1 *)(buf + i * qg_procs_stride);
				pids[i] = p->pid; mem[i] = p->used;
			} else {
				qg_proc_v2 *p = (qg_proc_v2 *)(buf + i * qg_procs_stride);
				pids[i] = p->pid; mem[i] = p->used;
			}
		}
		*n = k;
	}
	free(buf);
	return r;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"
)

// NVML return codes the guard tells apart.
const (
	nvmlSuccess          = 0
	nvmlNotSupported     = 3
	nvmlInsufficientSize = 7
	nvmlNoPermission     = 4
)

// valueNotAvailable is NVML_VALUE_NOT_AVAILABLE for unsigned long long fields.
const valueNotAvailable = ^uint64(0)

var nvmlLoad struct {
	sync.Mutex
	lib    string // the library dlopen is asked for (tests change it)
	loaded bool
}

func init() { nvmlLoad.lib = "libnvidia-ml.so.1" }

// loadNVML dlopens the library; once it is loaded it stays loaded (a failure is retried at
// the next call).
func loadNVML() error {
	nvmlLoad.Lock()
	defer nvmlLoad.Unlock()
	if nvmlLoad.loaded {
		return nil
	}
	var buf [512]C.char
	name := C.CString(nvmlLoad.lib)
	defer C.free(unsafe.Pointer(name))
	switch C.qg_load(name, &buf[0], C.int(len(buf))) {
	case 0:
		nvmlLoad.loaded = true
		return nil
	case 1:
		return fmt.Errorf("%w: %s not found (%s)", ErrNVMLUnavailable, nvmlLoad.lib, C.GoString(&buf[0]))
	default:
		return fmt.Errorf("%w: %s is too old or not NVML: %s", ErrNVMLUnavailable, nvmlLoad.lib, C.GoString(&buf[0]))
	}
}

func nvmlErr(what string, r C.qg_ret) error {
	return fmt.Errorf("NVML %s: %s (code %d)", what, C.GoString(C.qg_error_string(r)), int(r))
}

// NVML is a MemorySource and ProcessSource for one GPU, read through the NVIDIA Management
// Library loaded at run time. Its methods are safe for concurrent use.
type NVML struct {
	mu     sync.Mutex
	dev    C.qg_dev
	index  int
	name   string
	total  int64
	closed bool
}

// OpenNVML loads libnvidia-ml.so.1, initialises NVML and opens GPU index (NVML's numbering, as
// nvidia-smi shows it; CUDA_VISIBLE_DEVICES does not apply). Without the library it returns an
// error wrapping ErrNVMLUnavailable: "NVML not available: libnvidia-ml.so.1 not found (…)".
func OpenNVML(index int) (*NVML, error) {
	if index < 0 {
		return nil, fmt.Errorf("NVML: device index %d: want ≥ 0", index)
	}
	if err := loadNVML(); err != nil {
		return nil, err
	}
	if r := C.qg_do_init(); r != nvmlSuccess {
		return nil, fmt.Errorf("%w: %v", ErrNVMLUnavailable, nvmlErr("init", r))
	}
	var count C.uint
	if r := C.qg_do_count(&count); r != nvmlSuccess {
		C.qg_do_shutdown()
		return nil, nvmlErr("device count", r)
	}
	if index >= int(count) {
		C.qg_do_shutdown()
		return nil, fmt.Errorf("NVML: no GPU %d (this machine has %d)", index, int(count))
	}
	n := &NVML{index: index}
	if r := C.qg_do_handle(C.uint(index), &n.dev); r != nvmlSuccess {
		C.qg_do_shutdown()
		return nil, nvmlErr(fmt.Sprintf("handle of GPU %d", index), r)
	}
	var name [96]C.char
	if C.qg_do_name(n.dev, &name[0], C.uint(len(name))) == nvmlSuccess {
		n.name = C.GoString(&name[0])
	} else {
		n.name = fmt.Sprintf("GPU %d", index)
	}
	var total, used C.ulonglong
	if r := C.qg_do_meminfo(n.dev, &total, &used); r != nvmlSuccess {
		C.qg_do_shutdown()
		return nil, nvmlErr(fmt.Sprintf("memory info of GPU %d", index), r)
	}
	n.total = int64(total)
	return n, nil
}

// Index returns the GPU's NVML index.
func (n *NVML) Index() int { return n.index }

// Name returns the GPU's product name.
func (n *NVML) Name() string { return n.name }

// ProcessAPI names the per-process entry point found ("" when none).
func (n *NVML) ProcessAPI() string { return C.GoString(C.qg_procs_sym()) }

// Used returns the GPU's bytes in use (nvmlDeviceGetMemoryInfo).
func (n *NVML) Used() (int64, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return 0, errors.New("NVML: device closed")
	}
	var total, used C.ulonglong
	if r := C.qg_do_meminfo(n.dev, &total, &used); r != nvmlSuccess {
		return 0, nvmlErr(fmt.Sprintf("memory info of GPU %d", n.index), r)
	}
	return int64(used), nil
}

// Total returns the GPU's memory size.
func (n *NVML) Total() (int64, error) { return n.total, nil }

// Processes lists the compute processes on the GPU with their memory
// (nvmlDeviceGetComputeRunningProcesses, _v3, _v2 or the original). A process whose memory the
// driver does not report has Used -1.
func (n *NVML) Processes() ([]Process, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, errors.New("NVML: device closed")
	}
	if C.qg_have_procs() == 0 {
		return nil, fmt.Errorf("%w: nvmlDeviceGetComputeRunningProcesses not found in libnvidia-ml.so.1", ErrPerProcessUnsupported)
	}
	capacity := 64
	for try := 0; try < 4; try++ {
		pids := make([]C.uint, capacity)
		mem := make([]C.ulonglong, capacity)
		cnt := C.uint(capacity)
		r := C.qg_do_procs(n.dev, &cnt, (*C.uint)(unsafe.Pointer(&pids[0])), (*C.ulonglong)(unsafe.Pointer(&mem[0])))
		switch r {
		case nvmlSuccess:
			out := make([]Process, int(cnt))
			for i := range out {
				out[i] = Process{PID: int(pids[i]), Used: int64(mem[i])}
				if uint64(mem[i]) == valueNotAvailable {
					out[i].Used = -1
				}
			}
			return out, nil
		case nvmlInsufficientSize:
			capacity = int(cnt) + 32
		case nvmlNotSupported, nvmlNoPermission:
			return nil, fmt.Errorf("%w: %v", ErrPerProcessUnsupported, nvmlErr(C.GoString(C.qg_procs_sym()), r))
		default:
			return nil, nvmlErr(C.GoString(C.qg_procs_sym()), r)
		}
	}
	return nil, fmt.Errorf("NVML %s: process list kept growing past %d entries", C.GoString(C.qg_procs_sym()), capacity)
}

// Close shuts NVML down for this handle (NVML counts initialisations). Closing twice does
// nothing.
func (n *NVML) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	if r := C.qg_do_shutdown(); r != nvmlSuccess {
		return nvmlErr("shutdown", r)
	}
	return nil
}
