package backend

import (
	"fmt"
	"sort"
	"strings"
	"sync"
)

// The registry maps backend names ("cpu", "cuda") to constructors, so tools that pick a
// backend by name (the parity tool's specs, command-line flags) need not import every backend
// and a binary built without the cuda tag still names what it lacks.
//
// Backends register from an init function of a package that links them in:
//
//	func init() { backend.Register("cuda", func() (backend.Backend, error) { return open() }) }
//
// engine/cuda (build tag cuda) registers "cuda"; "cpu" is registered by engine/parity when
// nobody has registered it before (check with Registered).

var registry struct {
	mu   sync.RWMutex
	news map[string]func() (Backend, error)
}

// knownBuildTags names backends that exist in the source tree but only in builds with a tag,
// so Open can say how to get them.
var knownBuildTags = map[string]string{"cuda": "cuda"}

// Register makes a backend constructor available under name. It is meant for init functions:
// an empty name, a name with spaces or colons, a nil constructor or a name registered twice is a
// programming error and panics (as database/sql.Register does). Use Registered to register
// only when nobody else has.
func Register(name string, newBackend func() (Backend, error)) {
	if name == "" || strings.ContainsAny(name, " \t\n:,") {
		panic(fmt.Sprintf("backend.Register: invalid backend name %q", name))
	}
	if newBackend == nil {
		panic(fmt.Sprintf("backend.Register: backend %q has a nil constructor", name))
	}
	registry.mu.Lock()
	defer registry.mu.Unlock()
	if registry.news == nil {
		registry.news = map[string]func() (Backend, error){}
	}
	if _, dup := registry.news[name]; dup {
		panic(fmt.Sprintf("backend.Register: backend %q registered twice", name))
	}
	registry.news[name] = newBackend
}

// Registered reports whether a backend is registered under name.
func Registered(name string) bool {
	registry.mu.RLock()
	defer registry.mu.RUnlock()
	_, ok := registry.news[name]
	return ok
}

// Names returns the registered backend names, sorted.
func Names() []string {
	registry.mu.RLock()
	defer registry.mu.RUnlock()
	names := make([]string, 0, len(registry.news))
	for n := range registry.news {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Open constructs the backend registered under name. An unknown name is an error that lists
// the available backends; a backend that needs a build tag this binary was built without
// ("cuda") says how to build it. A constructor's error is returned wrapped with the name.
func Open(name string) (Backend, error) {
	registry.mu.RLock()
	newBackend, ok := registry.news[name]
	registry.mu.RUnlock()
	if !ok {
		avail := strings.Join(Names(), ", ")
		if avail == "" {
			avail = "none registered"
		}
		if tag, known := knownBuildTags[name]; known {
			return nil, fmt.Errorf("backend %q is not in this binary: build with `go build -tags %s` (available: %s)", name, tag, avail)
		}
		return nil, fmt.Errorf("unknown backend %q (available: %s)", name, avail)
	}
	b, err := newBackend()
	if err != nil {
		return nil, fmt.Errorf("backend %q: %w", name, err)
	}
	if b == nil {
		return nil, fmt.Errorf("backend %q: its constructor returned no backend and no error", name)
	}
	return b, nil
}

// Runner is implemented by backends whose calls are handed to one owner goroutine (the CUDA
// backend): Run executes fn there, and the backend calls fn makes run directly, without a
// hand-off each. A whole decode step run this way costs the host only its kernel launches.
// Callers use RunOn, which falls back to calling fn for other backends.
type Runner interface {
	Run(fn func() error) error
}

// RunOn runs fn through b's Runner when it has one, else calls it.
func RunOn(b Backend, fn func() error) error {
	if r, ok := b.(Runner); ok {
		return r.Run(fn)
	}
	return fn()
}
