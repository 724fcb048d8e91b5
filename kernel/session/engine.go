package session

import (
	"context"
	"fmt"
	"reflect"

	"github.com/qwengo/qwengo/kernel/symbols"
)

// engineHooks reaches the engine façade through its extracted symbols, by name, so the session
// builds and runs (without these features) whatever state the engine is in:
//
//	engine.CurrentContext  var func() context.Context   set to the running cell's context
//	engine.ResetPeak       func()                        called before each cell
//	engine.Memory          func() T                      T.Peak (int64) after each cell; T.String() for %mem
//	engine.MemoryReport    func() string                 %mem when present: accounting, budget, device, watchdog
var engineHooks = findEngineHooks(symbols.Symbols[enginePath+"/engine"])

type hooks struct {
	current reflect.Value // the CurrentContext variable (settable), or invalid
	reset   func()
	mem     reflect.Value // the Memory function, or invalid
	report  func() string // the MemoryReport function, or nil
}

func findEngineHooks(m map[string]reflect.Value) hooks {
	var h hooks
	if m == nil {
		return h
	}
	ctxFunc := reflect.TypeOf(func() context.Context { return nil })
	if v, ok := m["CurrentContext"]; ok && v.CanSet() && v.Type() == ctxFunc {
		h.current = v
	}
	if v, ok := m["ResetPeak"]; ok && v.Kind() == reflect.Func && v.Type().NumIn() == 0 && v.Type().NumOut() == 0 {
		if f, ok := v.Interface().(func()); ok {
			h.reset = f
		}
	}
	if v, ok := m["MemoryReport"]; ok && v.Kind() == reflect.Func {
		if f, ok := v.Interface().(func() string); ok {
			h.report = f
		}
	}
	if v, ok := m["Memory"]; ok && v.Kind() == reflect.Func && v.Type().NumIn() == 0 && v.Type().NumOut() == 1 {
		h.mem = v
	}
	return h
}

// setContext makes engine calls honour the running cell's context.
func (h hooks) setContext(f func() context.Context) {
	if h.current.IsValid() {
		h.current.Set(reflect.ValueOf(f))
	}
}

func (h hooks) resetPeak() {
	if h.reset != nil {
		h.reset()
	}
}

// stats calls engine.Memory, recovering from a panic in an engine mid-change.
func (h hooks) stats() (v reflect.Value) {
	if !h.mem.IsValid() {
		return reflect.Value{}
	}
	defer func() {
		if recover() != nil {
			v = reflect.Value{}
		}
	}()
	return h.mem.Call(nil)[0]
}

// peak is the engine's peak accounted memory since resetPeak (0 if unknown).
func (h hooks) peak() int64 {
	v := h.stats()
	if !v.IsValid() || v.Kind() != reflect.Struct {
		return 0
	}
	if f := v.FieldByName("Peak"); f.IsValid() && f.CanInt() {
		return f.Int()
	}
	return 0
}

// memory is engine.MemoryReport(), else engine.Memory().String(), or "" without an engine.
func (h hooks) memory() (out string) {
	if h.report != nil {
		defer func() {
			if p := recover(); p != nil {
				out = fmt.Sprintf("engine memory report failed: %v", p)
			}
		}()
		return h.report()
	}
	v := h.stats()
	if !v.IsValid() {
		return ""
	}
	if s, ok := v.Interface().(interface{ String() string }); ok {
		return s.String()
	}
	return ""
}
