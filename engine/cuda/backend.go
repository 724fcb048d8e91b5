//go:build cuda

package cuda

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/tensor"
)

func init() {
	backend.Register("cuda", func() (backend.Backend, error) { return Open() })
}

// ErrClosed is returned by every call on a backend after Close.
var ErrClosed = errors.New("cuda: the backend is closed")

// Backend is the CUDA backend. Create it with Open; it is safe for use from any goroutine
// (calls are serialised on the goroutine that owns the context).
type Backend struct {
	work   chan func()
	quit   chan struct{}
	closed atomic.Bool
	once   sync.Once

	name    string
	devName string
	ordinal int
	sms     int
	// smemOptin is the most shared memory a block may ask for (opting in above 48 KB).
	smemOptin int
	cc        [2]int
	total     int64
	driver    int

	acct accounts
	spin bool // callers and the owner goroutine poll a while before blocking (GOMAXPROCS > 1)
	// tid is the OS thread the owner goroutine is locked to: a call made on that thread is
	// made by the owner itself (inside Run) and runs directly instead of being handed off.
	tid atomic.Int64
	// gemv names the NVFP4 decode GEMV kernel (gemv.go; QWENGO_CUDA_GEMV).
	gemv string
	// gemvTCKernel forces a tensor-core GEMV variant (gemv_tc.cu; QWENGO_CUDA_GEMV_TC); ""
	// picks one per shape (gemvTCPick).
	gemvTCKernel string
	// gemvTCBVariant forces the multi-row tensor-core GEMV's shape (gemv_tcb.go;
	// QWENGO_CUDA_GEMV_TCB) and gemvSlice its k steps per block (QWENGO_CUDA_GEMV_SLICE); ""
	// and 0 pick per shape.
	gemvTCBVariant string
	gemvSlice      int
	// gemvLongSlice: gemv_tcp's K slice for one to four rows of K ≥ gemvTCPLongK (down_proj);
	// 0 is gemvTCPLongSlice1 (QWENGO_CUDA_GEMV_LONG_SLICE).
	gemvLongSlice int
	// gemvTCPVariant forces the resident tensor-core GEMV's shape (gemv_tcp.go;
	// QWENGO_CUDA_GEMV_TCP); gemvTCPOccupancy caches its blocks per SM by kernel.
	gemvTCPVariant   string
	gemvTCPOccupancy map[string]int
	// gemvTCPStepLoop picks the two-pass gemv_tcp's per-step consume loop
	// (QWENGO_CUDA_GEMV_STEPLOOP=1).
	gemvTCPStepLoop bool
	// gemvTCPMerge0 picks the per-tile global merge where an _m0 entry point exists
	// (QWENGO_CUDA_GEMV_MERGE0=1, gemv_tcp.go; a measurement switch).
	gemvTCPMerge0         bool
	gemvTCPMerge0Launches int // _m0 launches (TestTCPMergeSameBits)
	// gemvTCPBlockMerge lets one- to four-row gemv_tcp launches sum their K slices inside each
	// block (gemv_tcp.go gemvTCPBlockMergePlan; on unless QWENGO_CUDA_GEMV_BM=0).
	gemvTCPBlockMerge bool
	gemvTCPBMLaunches int // block-merge launches so far (its test checks where it applies)
	// gemvTCPCS lets one-row gemv_tcp launches take their column-scale forms (gemv_tcp.go
	// tcpOneRow; on unless QWENGO_CUDA_GEMV_CS=0).
	gemvTCPCS         bool
	gemvTCPCSLaunches int // launches of a column-scale form (its test checks where it applies)
	// stamps, while a test holds it, makes the decode GEMVs run their stamped entry points
	// (gemv_stamps.go).
	stamps tcpStamps
	// launchEx: the driver has cuLaunchKernelEx (programmatic and cooperative launches).
	launchEx bool
	// decodeLayers offers the persistent whole-stack decoder (decode_layers.go; on with
	// QWENGO_CUDA_DECODE_LAYERS=1); dl is its descriptor and buffers.
	decodeLayers bool
	dl           dlState
	// decodeFusedModel offers the fused decode ops to the model (FusedDecodeRows; on unless
	// QWENGO_CUDA_DECODE_FUSED=0).
	decodeFusedModel bool
	// decodeFusedRows is the most rows a chunk may have for the model to take the fused decode
	// ops (fusedDecodeRows, or QWENGO_CUDA_DECODE_FUSED_ROWS: a measurement knob).
	decodeFusedRows int
	// decodeNormRoPE lets QKNormRoPEAttention fold the q/k norms, RoPE and cache write into the
	// decode attention kernel (QWENGO_CUDA_DECODE_NR=1; measured slower, fused_decode.go).
	decodeNormRoPE bool
	// kernelTimes are the last timed profiler range's kernels (ProfileRange); timeKernels
	// times the ranges opened while it is set (SetKernelTiming).
	kernelTimes []backend.KernelTime
	timeKernels bool
	// The persistent GEMV's partial sums and arrival counters, and its blocks per SM per T.
	gemvPartial, gemvCounters devBuf
	gemvOccupancy             [gemvMaxRows]int
	// trainSIMT keeps MatMul and MatMulBackward on the fp32 SIMT kernels for every shape (the
	// reference path of parity tests; QWENGO_CUDA_GEMM=simt does it for the forward alone).
	trainSIMT bool
	// attnSIMT keeps prefill attention on the fp32 kernel (QWENGO_CUDA_ATTN=simt; flash.go).
	attnSIMT bool
	// decodeAttnTiles keeps decode attention on the shared-memory tile kernels
	// (QWENGO_CUDA_DECODE_ATTN=tiles; ops.go decodeAttnKernel).
	decodeAttnTiles bool
	// decodeAttnBlocks is the decode attention's split target, blocks an SM
	// (QWENGO_CUDA_DECODE_ATTN_BLOCKS; ops.go decodeAttnBlocksPerSM).
	decodeAttnBlocks int
	// decodeAttnPrefetch: each block of the one-row decode attention asks L2 for its first
	// decodeAttnPrefetch cached rows before pdl_wait; decodeAttnPrefetchAuto picks by split size
	// (QWENGO_CUDA_DECODE_ATTN_PREFETCH; ops.go decodeAttnPrefetchRows).
	decodeAttnPrefetch int
	// kvBF16: KV caches allocated from now on hold bf16 (kvcache.go; QWENGO_CUDA_KV).
	kvBF16 bool
	// pdl: the decode GEMVs start while the kernel before them finishes (programmatic dependent
	// launch; QWENGO_CUDA_PDL=0 turns it off). Cleared if the driver refuses such a launch.
	pdl bool
	// cubinModules, jitModules: how many kernel modules were loaded from their sm_90 cubin and
	// how many the driver JIT-compiled from PTX (KernelCode).
	cubinModules, jitModules int
	// adamChain: an AdamWMany call's batch launches after its first are programmatic dependents
	// of the one before (training.go adamManyLaunch; QWENGO_CUDA_ADAMW_PDL=0 turns it off).
	// Cleared if the driver refuses such a launch.
	adamChain bool
	// adamSingle: AdamWMany launches parameters of at least adamSingleMin elements alone, in the
	// chain (QWENGO_CUDA_ADAMW_SINGLE=0: in batches).
	adamSingle bool
	// adamStaged: one bf16 parameter with int8 moments takes the staged AdamW kernel
	// (train.cu adamw_staged; QWENGO_CUDA_ADAMW_STAGED=0: the plain one). adamStagedReady: the
	// staged kernels allowed their shared memory (training.go adamStagedShared).
	adamStaged      bool
	adamStagedReady map[string]bool
	// flashBwdReady: flash_bwd_dkdv may use more than 48 KB of dynamic shared memory.
	flashBwdReady bool

	// Owned by the worker goroutine.
	dev     device
	ctx     cuContext
	mods    []module
	fns     map[string]function
	live    map[devPtr]liveAlloc
	idsBuf  devBuf // token ids (int32) for Embedding, Workspace
	attnBuf devBuf // split attention partial results, Workspace
	// attnCounters are attention_decode_f32's per-KV-head arrival counters (left at zero).
	attnCounters devBuf
	argmaxBuf    devBuf // ArgMaxRows' int32 ids and per-block partials, Workspace
	// graphs are the instantiated CUDA graphs alive (graph.go), capturing is set while
	// CaptureGraph records.
	graphs    map[*Graph]struct{}
	capturing bool
	// argmaxCounters: argmax_rows_f32's per-row arrival counters, always zero between launches.
	argmaxCounters devBuf
	flashKV        devBuf // bf16 copies of the keys and values flash attention reads, Workspace
	// pool keeps freed transient tensors (Activations, Gradients, Workspace) by size for
	// reuse, accounted under Workspace; see Alloc.
	pool      map[int64][]devPtr
	poolBytes int64
	rope      map[ropeKey]devBuf // inverse frequencies per (head_dim, theta), Workspace
	gemm      gemmState          // cuBLASLt handle, plans and bf16 scratch (gemm.go)
	tr        trainBufs          // scratch of the training ops (training.go)
}

type liveAlloc struct {
	cat   backend.Category
	bytes int64
}

// devBuf is a grow-only device buffer.
type devBuf struct {
	ptr   devPtr
	bytes int64
}

type ropeKey struct {
	headDim int
	theta   float64
}

// Open opens GPU 0. See OpenDevice.
func Open() (*Backend, error) { return OpenDevice(0) }

// OpenDevice loads the driver, makes device ordinal's primary context current on a new locked
// goroutine and loads the kernels. It fails with a clear error where there is no driver, no GPU
// or the GPU cannot run sm_90 PTX.
func OpenDevice(ordinal int) (*Backend, error) {
	if err := loadDriver(); err != nil {
		return nil, err
	}
	kvBF16, err := kvFromEnv()
	if err != nil {
		return nil, err
	}
	b := &Backend{
		work: make(chan func(), 1), quit: make(chan struct{}), ordinal: ordinal, spin: runtime.GOMAXPROCS(0) > 1,
		fns: map[string]function{}, live: map[devPtr]liveAlloc{}, rope: map[ropeKey]devBuf{}, pool: map[int64][]devPtr{},
		graphs: map[*Graph]struct{}{}, kvBF16: kvBF16,
		// the environment's measurement knobs (doc.go lists them)
		gemv: gemvFromEnv(), gemvTCKernel: gemvTCFromEnv(), gemvTCBVariant: gemvTCBFromEnv(),
		gemvSlice: gemvSliceFromEnv(), gemvLongSlice: gemvLongSliceFromEnv(),
		gemvTCPVariant: gemvTCPFromEnv(), gemvTCPStepLoop: gemvTCPStepLoopFromEnv(), gemvTCPMerge0: gemvTCPMerge0FromEnv(),
		gemvTCPBlockMerge: gemvTCPBlockMergeFromEnv(), gemvTCPCS: gemvTCPCSFromEnv(),
		decodeFusedModel: decodeFusedFromEnv(), decodeFusedRows: decodeFusedRowsFromEnv(),
		decodeNormRoPE: decodeNormRoPEFromEnv(), decodeLayers: decodeLayersFromEnv(), attnSIMT: attnSIMTFromEnv(),
		decodeAttnTiles: os.Getenv("QWENGO_CUDA_DECODE_ATTN") == "tiles", decodeAttnBlocks: decodeAttnBlocksFromEnv(),
		decodeAttnPrefetch: decodeAttnPrefetchFromEnv(),
	}
	started := make(chan error, 1)
	go b.worker(started)
	if err := <-started; err != nil {
		return nil, err
	}
	return b, nil
}

// worker owns the context: it runs setup, then every call sent on b.work until Close. After a
// call it polls for the next one a while before blocking, as callers poll for the result: ops
// come in bursts (a forward is ~20 calls per layer) and a hand-off through a parked thread costs
// far more than a launch.
func (b *Backend) worker(started chan<- error) {
	runtime.LockOSThread()
	b.tid.Store(int64(syscall.Gettid()))
	if err := b.setup(); err != nil {
		b.teardown()
		started <- err
		return // the thread stays locked and exits with the goroutine
	}
	started <- nil
	for {
		if f := b.poll(); f != nil {
			f()
			continue
		}
		select {
		case f := <-b.work:
			f()
		case <-b.quit:
			return
		}
	}
}

// spinPolls bounds the polling of the hand-off channels (some tens of microseconds) before a
// side blocks: waking a parked thread costs about 10 µs each way, more than most ops.
const spinPolls = 4096

// poll waits for a job by polling (when spinning is on) and returns nil if none came.
func (b *Backend) poll() func() {
	n := 1
	if b.spin {
		n = spinPolls
	}
	for i := 0; i < n; i++ {
		select {
		case f := <-b.work:
			return f
		default:
		}
	}
	return nil
}

func (b *Backend) setup() error {
	n, err := deviceCount()
	if err != nil {
		return fmt.Errorf("cuda: %w", err)
	}
	if b.ordinal < 0 || b.ordinal >= n {
		return fmt.Errorf("cuda: no GPU %d (%d present)", b.ordinal, n)
	}
	if b.dev, err = getDevice(b.ordinal); err != nil {
		return fmt.Errorf("cuda: %w", err)
	}
	if b.devName, err = deviceName(b.dev); err != nil {
		return fmt.Errorf("cuda: %w", err)
	}
	if b.total, err = deviceTotalMem(b.dev); err != nil {
		return fmt.Errorf("cuda: %w", err)
	}
	for _, a := range []struct {
		dst  *int
		attr int
	}{{&b.sms, attrSMCount}, {&b.cc[0], attrCCMajor}, {&b.cc[1], attrCCMinor}, {&b.smemOptin, attrSmemOptin}} {
		if *a.dst, err = deviceAttribute(b.dev, a.attr); err != nil {
			return fmt.Errorf("cuda: %s: %w", b.devName, err)
		}
	}
	b.driver = driverVersion()
	b.name = fmt.Sprintf("cuda:%d %s (%s, sm_%d%d, %d SMs, driver %d.%d)", b.ordinal, b.devName,
		backend.Human(b.total), b.cc[0], b.cc[1], b.sms, b.driver/1000, b.driver%1000/10)
	if b.cc[0] < 9 {
		return fmt.Errorf("cuda: %s has compute capability %d.%d; the kernels are built for sm_90 (Hopper) and newer", b.devName, b.cc[0], b.cc[1])
	}
	ctx, err := retainPrimaryContext(b.dev)
	if err != nil {
		return fmt.Errorf("cuda: %s: %w", b.devName, err)
	}
	b.ctx = ctx
	if err := setCurrent(ctx); err != nil {
		return fmt.Errorf("cuda: %s: %w", b.devName, err)
	}
	if err := streamInit(); err != nil {
		return fmt.Errorf("cuda: %s: %w", b.devName, err)
	}
	b.launchEx = pdlInit()
	b.pdl = pdlFromEnv() && b.launchEx
	b.adamChain = adamChainFromEnv() && b.launchEx
	b.adamSingle = adamSingleFromEnv()
	b.adamStaged = adamStagedFromEnv()
	for _, pm := range ptxModules {
		if err := b.loadPTX(pm); err != nil {
			return err
		}
	}
	b.name = strings.TrimSuffix(b.name, ")") + ", kernels: " + b.KernelCode() + ")"
	return nil
}

// loadPTX loads an embedded kernel module and registers its kernels (worker goroutine);
// teardown unloads it. On a compute capability 9.0 GPU it loads the module's sm_90 cubin (no
// JIT); where that is refused, on other GPUs, or with QWENGO_CUDA_JIT=1, the driver
// JIT-compiles the PTX (the module counts say which).
func (b *Backend) loadPTX(pm ptxModule) error {
	var m module
	loaded := false
	if b.cc == [2]int{9, 0} && !jitFromEnv() {
		if img, err := readCubin(pm.file); err == nil {
			if m, err = loadModule(img); err == nil {
				loaded = true
				b.cubinModules++
			}
			// A refused cubin (a driver too old for it, say) falls back to the PTX below.
		}
	}
	if !loaded {
		src, err := kernelFS.ReadFile(pm.file)
		if err != nil {
			return fmt.Errorf("cuda: embedded %s: %w", pm.file, err)
		}
		if m, err = loadModule(src); err != nil {
			return fmt.Errorf("cuda: loading %s on %s: %w", pm.file, b.devName, err)
		}
		b.jitModules++
	}
	b.mods = append(b.mods, m)
	for _, k := range pm.kernels {
		f, err := moduleFunction(m, k)
		if err != nil {
			return fmt.Errorf("cuda: %s: %w", pm.file, err)
		}
		b.fns[k] = f
		kernelNames[f] = k
	}
	return nil
}

// jitFromEnv reports whether QWENGO_CUDA_JIT=1 asks for the PTX even where a cubin fits.
func jitFromEnv() bool { return os.Getenv("QWENGO_CUDA_JIT") == "1" }

// KernelCode says what the kernels were loaded from: the embedded sm_90 cubins (ptxas release
// in cubins.sum) or the PTX the driver JIT-compiled (a machine's first open then takes tens of
// seconds; QWENGO_CUDA_JIT=1 or a GPU other than compute capability 9.0).
func (b *Backend) KernelCode() string {
	switch {
	case b.jitModules == 0:
		return "sm_90 cubins, ptxas " + cubinRelease()
	case b.cubinModules == 0:
		return "PTX JIT"
	}
	return fmt.Sprintf("%d modules from sm_90 cubins, %d by PTX JIT", b.cubinModules, b.jitModules)
}

// loadLazyPTX loads the lazyPTXModules entry of file unless its kernels are loaded already
// (worker goroutine).
func (b *Backend) loadLazyPTX(file string) error {
	for _, pm := range lazyPTXModules {
		if pm.file != file {
			continue
		}
		if len(pm.kernels) > 0 && b.fns[pm.kernels[0]] != nil {
			return nil
		}
		return b.loadPTX(pm)
	}
	return fmt.Errorf("cuda: no lazily loaded module %s", file)
}

// teardown frees everything the backend holds and releases the context (worker goroutine).
func (b *Backend) teardown() error {
	var errs []error
	b.freeGraphs()
	b.gemm.release()
	for p, a := range b.live {
		if err := memFree(p); err != nil {
			errs = append(errs, err)
		}
		b.acct.remove(a.cat, a.bytes)
	}
	clear(b.live)
	b.dropPool()
	b.idsBuf, b.attnBuf, b.flashKV, b.attnCounters, b.argmaxBuf = devBuf{}, devBuf{}, devBuf{}, devBuf{}, devBuf{}
	b.gemvPartial, b.gemvCounters, b.argmaxCounters = devBuf{}, devBuf{}, devBuf{}
	b.tr = trainBufs{}
	b.dl = dlState{}
	clear(b.rope)
	for _, m := range b.mods {
		if err := unloadModule(m); err != nil {
			errs = append(errs, err)
		}
	}
	b.mods = nil
	if b.ctx != nil {
		if err := releasePrimaryContext(b.dev); err != nil {
			errs = append(errs, err)
		}
		b.ctx = nil
	}
	return errors.Join(errs...)
}

// Close frees every tensor and weight of the backend, releases the context and stops the
// owner goroutine. Later calls return ErrClosed; Close itself may be called again.
func (b *Backend) Close() error {
	var err error
	b.once.Do(func() {
		err = b.do(func() error {
			b.closed.Store(true)
			return b.teardown()
		})
		close(b.quit)
	})
	return err
}

// do runs f on the owner goroutine and returns its error; a panic in f becomes an error.
func (b *Backend) do(f func() error) error {
	if b.closed.Load() {
		return ErrClosed
	}
	if b.onOwner() {
		return f()
	}
	done := make(chan error, 1)
	job := func() {
		if b.closed.Load() {
			done <- ErrClosed
			return
		}
		defer func() {
			if r := recover(); r != nil {
				done <- fmt.Errorf("cuda: internal error: %v", r)
			}
		}()
		done <- f()
	}
	select {
	case b.work <- job:
	case <-b.quit:
		return ErrClosed
	}
	if b.spin {
		for i := 0; i < spinPolls; i++ {
			select {
			case err := <-done:
				return err
			default:
			}
		}
	}
	return <-done
}

// onOwner reports whether the caller is the owner goroutine: only it runs on the locked thread.
func (b *Backend) onOwner() bool { return int64(syscall.Gettid()) == b.tid.Load() }

// Run implements backend.Runner: fn runs on the owner goroutine, and every backend call it
// makes runs there directly — no hand-off per op, so a decode step costs the kernel launches
// alone on the host. Calls from other goroutines wait until fn returns. A panic in fn becomes
// an error.
func (b *Backend) Run(fn func() error) error { return b.do(fn) }

// Name implements backend.Backend: the device, its memory, compute capability and driver.
func (b *Backend) Name() string { return b.name }

// DeviceName is the GPU's name as the driver reports it ("NVIDIA H200").
func (b *Backend) DeviceName() string { return b.devName }

// TotalMemory is the device's memory in bytes.
func (b *Backend) TotalMemory() int64 { return b.total }

// DeviceMemory asks the driver for the device's free and total bytes (all processes).
func (b *Backend) DeviceMemory() (free, total int64, err error) {
	err = b.do(func() error {
		var e error
		free, total, e = memGetInfo()
		return e
	})
	return
}

// Sync waits for every launched kernel and returns the first asynchronous error.
func (b *Backend) Sync() error { return b.do(synchronize) }

// SetBudget limits the bytes the backend may hold (all categories); 0 removes the limit. An
// allocation that would pass it fails with an error wrapping *backend.OverBudget.
func (b *Backend) SetBudget(bytes int64) { b.acct.setBudget(bytes) }

// Memory implements backend.Backend.
func (b *Backend) Memory() backend.MemStats {
	st := b.acct.stats()
	st.Device, st.Total = b.name, b.total
	return st
}

// ResetPeak implements backend.Backend.
func (b *Backend) ResetPeak() { b.acct.resetPeak() }

// accounts tracks bytes per category, the peak and the budget.
type accounts struct {
	mu     sync.Mutex
	inUse  [backend.NumCategories]int64
	peak   int64
	peakBy [backend.NumCategories]int64
	budget int64
	allocs int64
	live   int64
}

func (a *accounts) used() int64 {
	var s int64
	for _, v := range a.inUse {
		s += v
	}
	return s
}

// check returns *backend.OverBudget (and the per-category figures) when n more bytes would
// cross the budget.
func (a *accounts) check(cat backend.Category, n int64) (*backend.OverBudget, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if used := a.used(); a.budget > 0 && used+n > a.budget {
		return &backend.OverBudget{Category: cat, Request: n, InUse: used, Budget: a.budget}, a.byCategory()
	}
	return nil, ""
}

// add records an allocation of n bytes under cat.
func (a *accounts) add(cat backend.Category, n int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.inUse[cat] += n
	a.allocs++
	a.live++
	if used := a.used(); used > a.peak {
		a.peak, a.peakBy = used, a.inUse
	}
}

// remove records that an allocation of n bytes under cat was freed.
func (a *accounts) remove(cat backend.Category, n int64) {
	a.mu.Lock()
	a.inUse[cat] -= n
	a.live--
	a.mu.Unlock()
}

// toPool moves a freed allocation of n bytes from cat to the pool (Workspace).
func (a *accounts) toPool(cat backend.Category, n int64) {
	a.mu.Lock()
	a.inUse[cat] -= n
	a.inUse[backend.Workspace] += n
	a.live--
	a.mu.Unlock()
}

// fromPool moves a pooled block of n bytes to a new allocation under cat.
func (a *accounts) fromPool(cat backend.Category, n int64) {
	a.mu.Lock()
	a.inUse[backend.Workspace] -= n
	a.inUse[cat] += n
	a.allocs++
	a.live++
	a.mu.Unlock()
}

// dropPooled records that a pooled block of n bytes was returned to the driver.
func (a *accounts) dropPooled(n int64) {
	a.mu.Lock()
	a.inUse[backend.Workspace] -= n
	a.mu.Unlock()
}

// byCategory lists the non-zero categories, largest first ("weights 7.50 GiB, kv_cache 1.00 GiB").
func (a *accounts) byCategory() string {
	type kv struct {
		c backend.Category
		n int64
	}
	var l []kv
	for c, n := range a.inUse {
		if n > 0 {
			l = append(l, kv{backend.Category(c), n})
		}
	}
	if len(l) == 0 {
		return "nothing"
	}
	sort.Slice(l, func(i, j int) bool { return l[i].n > l[j].n })
	parts := make([]string, len(l))
	for i, e := range l {
		parts[i] = fmt.Sprintf("%s %s", e.c, backend.Human(e.n))
	}
	return strings.Join(parts, ", ")
}

func (a *accounts) setBudget(n int64) {
	a.mu.Lock()
	a.budget = max(n, 0)
	a.mu.Unlock()
}

func (a *accounts) resetPeak() {
	a.mu.Lock()
	a.peak, a.peakBy = a.used(), a.inUse
	a.mu.Unlock()
}

func (a *accounts) stats() backend.MemStats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return backend.MemStats{InUse: a.inUse, Peak: a.peak, PeakBy: a.peakBy, Budget: a.budget, Allocs: a.allocs, Live: a.live}
}

// alloc is the one place device memory is allocated (worker goroutine): budget first, then
// cuMemAlloc. Where the budget or the device is short, the pool of freed blocks is returned to
// the driver and the request tried again. what names the allocation in errors.
func (b *Backend) alloc(cat backend.Category, n int64, what string) (devPtr, error) {
	if n <= 0 {
		return 0, fmt.Errorf("cuda: alloc %s: %d bytes", what, n)
	}
	if ob, _ := b.acct.check(cat, n); ob != nil && b.poolBytes > 0 {
		b.dropPool()
	}
	if ob, by := b.acct.check(cat, n); ob != nil {
		return 0, fmt.Errorf("cuda: alloc %s: %w (in use: %s)", what, ob, by)
	}
	p, err := memAlloc(n)
	if err != nil && b.poolBytes > 0 {
		b.dropPool()
		p, err = memAlloc(n)
	}
	if err != nil {
		free, total, _ := memGetInfo()
		return 0, fmt.Errorf("cuda: alloc %s of %s under %s: %w (device: %s free of %s; this backend holds %s)",
			what, backend.Human(n), cat, err, backend.Human(free), backend.Human(total), backend.Human(b.acct.stats().Used()))
	}
	b.acct.add(cat, n)
	b.live[p] = liveAlloc{cat, n}
	return p, nil
}

// Pool limits: blocks up to poolMaxBlock, poolMaxBytes in all.
const (
	poolMaxBlock = 256 << 20
	poolMaxBytes = 2 << 30
)

// pooled reports whether freed tensors of cat are kept for reuse: per-step transient memory.
func pooled(cat backend.Category) bool {
	return cat == backend.Activations || cat == backend.Gradients || cat == backend.Workspace
}

// allocTensor allocates n bytes under cat, from the pool when a block of that size is there
// (worker goroutine). The memory is not zeroed.
func (b *Backend) allocTensor(cat backend.Category, n int64, what string) (devPtr, error) {
	if l := b.pool[n]; pooled(cat) && len(l) > 0 {
		p := l[len(l)-1]
		b.pool[n] = l[:len(l)-1]
		b.poolBytes -= n
		b.acct.fromPool(cat, n)
		b.live[p] = liveAlloc{cat, n}
		return p, nil
	}
	return b.alloc(cat, n, what)
}

// freeTensor frees an allocation, keeping it in the pool where it qualifies (worker goroutine).
func (b *Backend) freeTensor(p devPtr) {
	a, ok := b.live[p]
	if !ok {
		return
	}
	if !pooled(a.cat) || a.bytes > poolMaxBlock || b.poolBytes+a.bytes > poolMaxBytes {
		b.free(p)
		return
	}
	delete(b.live, p)
	b.pool[a.bytes] = append(b.pool[a.bytes], p)
	b.poolBytes += a.bytes
	b.acct.toPool(a.cat, a.bytes)
}

// dropPool returns every pooled block to the driver (worker goroutine).
func (b *Backend) dropPool() {
	for n, l := range b.pool {
		for _, p := range l {
			memFree(p)
			b.acct.dropPooled(n)
		}
	}
	clear(b.pool)
	b.poolBytes = 0
}

// ProfileRange starts (on) or stops the profiler's capture range: a profiler run with capture
// from the start off (ncu --profile-from-start off, nsys --capture-range=cudaProfilerApi) then
// records only the kernels launched in between. The benchmark's QWENGO_BENCH_PROFILE uses it.
//
// With SetKernelTiming(true) or QWENGO_CUDA_KERNEL_TIMES=1 the range also times every kernel
// launched in it with CUDA events (KernelTimes reads them): serialised, so the sum exceeds the overlapped wall time, but
// without a profiler's replays.
func (b *Backend) ProfileRange(on bool) error {
	return b.do(func() error {
		if on {
			b.kernelTimes = nil
		}
		if b.timeKernels || os.Getenv("QWENGO_CUDA_KERNEL_TIMES") == "1" || activeKernelTimer != nil {
			if on {
				activeKernelTimer = newKernelTimer()
			} else if kt := activeKernelTimer; kt != nil {
				activeKernelTimer = nil
				times, err := kt.finish()
				if err != nil {
					return err
				}
				b.kernelTimes = times
			}
		}
		return profilerRange(on)
	})
}

// SetKernelTiming implements backend.Profiler: ranges opened from now on time every kernel (as
// QWENGO_CUDA_KERNEL_TIMES=1 does), or not.
func (b *Backend) SetKernelTiming(on bool) {
	b.do(func() error {
		b.timeKernels = on
		return nil
	})
}

// KernelTimes returns the per-kernel times of the last timed ProfileRange (SetKernelTiming or
// QWENGO_CUDA_KERNEL_TIMES=1), longest total first (nil otherwise).
func (b *Backend) KernelTimes() []backend.KernelTime {
	var out []backend.KernelTime
	b.do(func() error {
		out = slices.Clone(b.kernelTimes)
		return nil
	})
	return out
}

// ReleaseCache returns the freed tensors kept for reuse to the driver, and the scratch buffers
// that grow to the largest op seen (bf16 operand copies for cuBLASLt, the training ops'
// partials, flash attention's bf16 keys and values): after a large batch they would otherwise
// stay allocated at its size. They are accounted under Workspace until then; an allocation
// that would cross the budget (or find the device full) releases the pooled tensors by itself
// first. The scratch is allocated again at the next op that needs it.
func (b *Backend) ReleaseCache() error {
	return b.do(func() error {
		b.dropPool()
		for _, buf := range []*devBuf{&b.gemm.act, &b.gemm.act2, &b.gemm.wbuf, &b.gemm.hilo, &b.tr.scratch, &b.flashKV} {
			if buf.ptr != 0 {
				b.free(buf.ptr)
				*buf = devBuf{}
			}
		}
		return nil
	})
}

// free releases an allocation made by alloc (worker goroutine).
func (b *Backend) free(p devPtr) {
	a, ok := b.live[p]
	if !ok {
		return
	}
	delete(b.live, p)
	memFree(p)
	b.acct.remove(a.cat, a.bytes)
}

// Tensor is a device tensor: row-major float32 [Rows, Cols] in one allocation.
type Tensor struct {
	rows, cols int
	ptr        devPtr // 0 after Free
	cat        backend.Category
	owner      *Backend
	view       bool // shares another allocation (RowView, WeightTensor): Free does nothing
	// bf16 marks a KV cache tensor stored as bf16 (kvcache.go): only the ops that read or write
	// caches take it (tenKV); every other op refuses it (ten).
	bf16 bool
}

// Rows implements backend.Tensor.
func (t *Tensor) Rows() int { return t.rows }

// Cols implements backend.Tensor.
func (t *Tensor) Cols() int { return t.cols }

// Shape implements backend.Tensor.
func (t *Tensor) Shape() []int { return []int{t.rows, t.cols} }

// DType implements backend.Tensor: F32, or BF16 for a bf16 KV cache or parameter gradient.
func (t *Tensor) DType() tensor.DType {
	if t.bf16 {
		return tensor.BF16
	}
	return tensor.F32
}

func (t *Tensor) n() int { return t.rows * t.cols }

// elemBytes is the size of one element as stored.
func (t *Tensor) elemBytes() int64 {
	if t.bf16 {
		return 2
	}
	return 4
}

func (t *Tensor) bytes() int64 { return int64(t.rows) * int64(t.cols) * t.elemBytes() }

// maxElems bounds one tensor (2^34 floats = 64 GiB) so rows*cols cannot overflow.
const maxElems = 1 << 34

// Alloc implements backend.Backend. Freed tensors of the transient categories (Activations,
// Gradients, Workspace) are kept by size and handed out again (zeroed) instead of going back to
// the driver: cuMemFree waits for the GPU, and a forward allocates the same shapes every call.
func (b *Backend) Alloc(cat backend.Category, rows, cols int) (backend.Tensor, error) {
	return b.allocAs(cat, rows, cols, kvDefault)
}

// kvType says what a KV cache allocation holds: the backend's default (kvBF16), float32 or bf16.
type kvType int

const (
	kvDefault kvType = iota
	kvF32
	kvBF16
)

// allocAs is Alloc with the element type of a KV cache chosen by kv; a Gradients tensor is bf16
// for kvBF16 (AllocGradient); other categories are float32 whatever kv says.
func (b *Backend) allocAs(cat backend.Category, rows, cols int, kv kvType) (backend.Tensor, error) {
	if cat < 0 || cat >= backend.NumCategories {
		return nil, fmt.Errorf("cuda: alloc: unknown category %d", int(cat))
	}
	if rows <= 0 || cols <= 0 || rows > maxElems/cols {
		return nil, fmt.Errorf("cuda: alloc %s: cannot allocate [%d, %d]", cat, rows, cols)
	}
	t := &Tensor{rows: rows, cols: cols, cat: cat, owner: b}
	err := b.do(func() error {
		t.bf16 = cat == backend.KVCache && (kv == kvBF16 || kv == kvDefault && b.kvBF16) || cat == backend.Gradients && kv == kvBF16
		p, err := b.allocTensor(cat, t.bytes(), fmt.Sprintf("%s [%d, %d]", cat, rows, cols))
		if err != nil {
			return err
		}
		if err := memsetD8(p, 0, t.bytes()); err != nil {
			b.freeTensor(p)
			return fmt.Errorf("cuda: alloc %s [%d, %d]: %w", cat, rows, cols, err)
		}
		t.ptr = p
		return nil
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// Free implements backend.Backend.
func (b *Backend) Free(x backend.Tensor) {
	t, ok := x.(*Tensor)
	if !ok || t == nil || t.owner != b || t.view {
		return
	}
	b.do(func() error {
		if t.ptr != 0 {
			b.freeTensor(t.ptr)
			t.ptr = 0
		}
		return nil
	})
}

// ten checks that x is a live float32 tensor of this backend (worker goroutine).
func (b *Backend) ten(x backend.Tensor, op, name string) (*Tensor, error) {
	t, err := b.tenAny(x, op, name)
	if err == nil && t.bf16 {
		return nil, fmt.Errorf("cuda: %s: %s [%d, %d] is a bf16 %s; this op takes float32 tensors", op, name, t.rows, t.cols, bf16What(t))
	}
	return t, err
}

// tenKV is ten for the operands that may be bf16 KV caches (kvcache.go).
func (b *Backend) tenKV(x backend.Tensor, op, name string) (*Tensor, error) {
	t, err := b.tenAny(x, op, name)
	if err == nil && t.bf16 && t.cat != backend.KVCache {
		return nil, fmt.Errorf("cuda: %s: %s [%d, %d] is a bf16 %s, not a KV cache", op, name, t.rows, t.cols, bf16What(t))
	}
	return t, err
}

// tenG is ten for the operands that may be bf16 parameter gradients (gradient.go).
func (b *Backend) tenG(x backend.Tensor, op, name string) (*Tensor, error) {
	t, err := b.tenAny(x, op, name)
	if err == nil && t.bf16 && t.cat != backend.Gradients {
		return nil, fmt.Errorf("cuda: %s: %s [%d, %d] is a bf16 %s, not a parameter gradient", op, name, t.rows, t.cols, bf16What(t))
	}
	return t, err
}

// tenAny checks that x is a live tensor of this backend, of either element type (Upload,
// Download).
func (b *Backend) tenAny(x backend.Tensor, op, name string) (*Tensor, error) {
	t, ok := x.(*Tensor)
	switch {
	case !ok || t == nil:
		return nil, fmt.Errorf("cuda: %s: %s is %T, not a CUDA tensor", op, name, x)
	case t.owner != b:
		return nil, fmt.Errorf("cuda: %s: %s belongs to another backend", op, name)
	case t.ptr == 0:
		return nil, fmt.Errorf("cuda: %s: %s [%d, %d] was freed", op, name, t.rows, t.cols)
	}
	return t, nil
}

// Upload implements backend.Backend.
func (b *Backend) Upload(x backend.Tensor, src []float32) error {
	return b.do(func() error {
		t, err := b.tenAny(x, "upload", "destination")
		if err != nil {
			return err
		}
		if len(src) != t.n() {
			return fmt.Errorf("cuda: upload of %d values into [%d, %d]", len(src), t.rows, t.cols)
		}
		p := unsafe.Pointer(&src[0])
		if t.bf16 { // a bf16 KV cache or gradient: rounded to nearest even here, as the kernels round
			h := make([]uint16, len(src))
			for i, v := range src {
				h[i] = tensor.F32ToBF16(v)
			}
			p = unsafe.Pointer(&h[0])
		}
		if err := memcpyHtoD(t.ptr, p, t.bytes()); err != nil {
			return fmt.Errorf("cuda: upload [%d, %d]: %w", t.rows, t.cols, err)
		}
		return nil
	})
}

// Download implements backend.Backend. It waits for the kernels writing t.
func (b *Backend) Download(x backend.Tensor, dst []float32) ([]float32, error) {
	var out []float32
	err := b.do(func() error {
		t, err := b.tenAny(x, "download", "source")
		if err != nil {
			return err
		}
		if cap(dst) >= t.n() {
			out = dst[:t.n()]
		} else {
			out = make([]float32, t.n())
		}
		if t.bf16 { // a bf16 KV cache or gradient: widened exactly
			h := make([]uint16, t.n())
			if err := memcpyDtoH(unsafe.Pointer(&h[0]), t.ptr, t.bytes()); err != nil {
				return fmt.Errorf("cuda: download [%d, %d]: %w", t.rows, t.cols, err)
			}
			for i, v := range h {
				out[i] = tensor.BF16ToF32(v)
			}
			return nil
		}
		if err := memcpyDtoH(unsafe.Pointer(&out[0]), t.ptr, t.bytes()); err != nil {
			return fmt.Errorf("cuda: download [%d, %d]: %w", t.rows, t.cols, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// grow makes buf hold at least n bytes under cat (worker goroutine).
func (b *Backend) grow(buf *devBuf, cat backend.Category, n int64, what string) error {
	if buf.bytes >= n {
		return nil
	}
	n = max(n, 2*buf.bytes, 1024)
	p, err := b.alloc(cat, n, what)
	if err != nil {
		return err
	}
	if buf.ptr != 0 {
		b.free(buf.ptr)
	}
	*buf = devBuf{p, n}
	return nil
}

// blocks is the grid size for a grid-stride kernel over n items with 256 threads per block.
func (b *Backend) blocks(n int) int {
	return max(1, min((n+255)/256, b.sms*32))
}
