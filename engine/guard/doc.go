// Package guard keeps GPU memory within a budget: it resolves the budget, reads device memory
// (NVML, loaded at run time), attributes it to a process tree, and runs a watchdog that acts
// when usage stays over the limit.
//
// # Design (DESIGN.md principle 4: memory is accounted, not discovered)
//
// The first line of defence is the engine's own allocator: every device allocation is checked
// against a Budget (Budget.Check) and one that would cross it fails with the backend's typed
// *backend.OverBudget error — nothing is allocated, the session and every resident model stay
// usable. Explain turns such an error and the backend's MemStats into a report naming the bytes
// in use by category and the largest consumers.
//
// The second line is the Watchdog, for memory the allocator cannot see (other libraries, other
// processes, fragmentation, a wrapped command): it polls a MemorySource every PollInterval and,
// when usage has been over the limit continuously for OverFor (0 = the first sample over), it
// calls the configured actions — cancel the running engine call's context (Watch), release
// caches, notify — and records an Event with the numbers. It never kills the hosting process.
// One Event is fired per over-limit episode: usage must drop to the limit or below before the
// watchdog fires again.
//
// The third line is the `qwenrepl guard` command (kernel/jobs), which wraps any command with the
// seed project's semantics: it polls NVML, and when the command's process tree or the whole
// device is over the limit for --gpu-over-secs it kills the command's process group and exits
// with status 124.
//
// # Budget resolution
//
// ResolveBudget picks, in order: an explicit limit (qwenrepl's --gpu-limit-gb); else the
// environment variable QWENGO_GPU_LIMIT_GB; else the device's total memory minus a margin of
// max(2 GiB, 5 % of the total). "GB" in flags and in the environment means GiB (limit × 1024 MiB,
// as the seed's wrapper counted); 0 means no limit.
//
// # Reading memory
//
// A MemorySource reports the device's bytes in use and its total; a ProcessSource also lists
// per-process usage. NVML (OpenNVML) is loaded with dlopen("libnvidia-ml.so.1") through a small
// cgo shim, so nothing links against the driver: the package builds, vets and tests on machines
// without a GPU, and OpenNVML then returns an error wrapping ErrNVMLUnavailable. Per-process
// usage comes from nvmlDeviceGetComputeRunningProcesses (the _v3, _v2 and plain symbols are
// tried in that order). Fake is an in-memory source for tests.
//
// A Sampler turns a source into Readings: the device's bytes in use and, when a root PID is
// given, the bytes of that process's tree (its descendants found through /proc, plus the members
// of its process group). The seed project learnt that per-process figures read 0 on
// unified-memory machines (and PIDs differ across container namespaces): when the tree reads 0
// while the device's usage has grown past the Baseline by more than MinGrowth, the Sampler says
// so in the Reading and attributes the device total to the tree.
//
// Seen on an H200 (driver 580, gVisor): nvmlDeviceGetComputeRunningProcesses_v3 lists the
// command's PID with its memory (a 3e9-byte torch allocation read 3.39 GiB per process, 4.00 GiB
// on the device), so per-process figures work there and the fallback is not needed.
package guard
