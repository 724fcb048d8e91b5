package kernel

import (
	"encoding/json"
	"runtime"
	"unicode/utf8"

	"github.com/qwengo/qwengo/kernel/wire"
)

// handlerTable maps message types to handlers; control and shell share it
// (execute_request arriving on control is refused by the handler).
func (k *Kernel) handlerTable() map[string]handler {
	return map[string]handler{
		"execute_request":     k.handleExecute,
		"kernel_info_request": k.handleKernelInfo,
		"complete_request":    k.handleComplete,
		"inspect_request":     k.handleInspect,
		"is_complete_request": k.handleIsComplete,
		"history_request":     k.handleHistory,
		"comm_info_request":   k.handleCommInfo,
		"comm_open":           k.handleCommOpen,
		"comm_msg":            k.ignore,
		"comm_close":          k.ignore,
		"connect_request":     k.handleConnect,
		"shutdown_request":    k.handleShutdown,
		"interrupt_request":   k.handleInterrupt,
		"debug_request":       k.handleDebug,
	}
}

// KernelInfo is the kernel_info_reply content.
func (k *Kernel) KernelInfo() map[string]any {
	return map[string]any{
		"status":                 "ok",
		"protocol_version":       wire.ProtocolVersion,
		"implementation":         "qwengo",
		"implementation_version": Version,
		"language_info": map[string]any{
			"name":               "go",
			"version":            goVersion(runtime.Version()),
			"mimetype":           "text/x-go",
			"file_extension":     ".go",
			"pygments_lexer":     "go",
			"codemirror_mode":    "go",
			"nbconvert_exporter": "script",
		},
		"banner": "qwengo " + Version + " — Go " + goVersion(runtime.Version()) +
			" cells interpreted by yaegi, with the qwengo engine preloaded on " + DeviceName() +
			".\nType %help for magics.",
		"help_links": []map[string]string{
			{"text": "Go documentation", "url": "https://go.dev/doc/"},
			{"text": "Go standard library", "url": "https://pkg.go.dev/std"},
		},
		"debugger": false,
	}
}

func (k *Kernel) handleKernelInfo(ch *wire.Channel, m *wire.Message) {
	k.reply(ch, m, "kernel_info_reply", k.KernelInfo(), nil)
}

// runeToByte converts a code-point offset (the protocol's unit) into a byte
// offset of s, clamped to [0, len(s)].
func runeToByte(s string, pos int) int {
	if pos <= 0 {
		return 0
	}
	i := 0
	for b := range s {
		if i == pos {
			return b
		}
		i++
	}
	return len(s)
}

// byteToRune converts a byte offset of s into a code-point offset.
func byteToRune(s string, b int) int {
	if b <= 0 {
		return 0
	}
	if b > len(s) {
		b = len(s)
	}
	return utf8.RuneCountInString(s[:b])
}

func (k *Kernel) handleComplete(ch *wire.Channel, m *wire.Message) {
	var req struct {
		Code      string `json:"code"`
		CursorPos *int   `json:"cursor_pos"`
	}
	if err := m.DecodeContent(&req); err != nil {
		k.reply(ch, m, "complete_reply", errorContent("BadRequest", err.Error(), nil), nil)
		return
	}
	cursor := len(req.Code)
	if req.CursorPos != nil {
		cursor = runeToByte(req.Code, *req.CursorPos)
	}
	c := k.interp.Complete(req.Code, cursor)
	if c.Matches == nil {
		c.Matches = []string{}
	}
	if c.Metadata == nil {
		c.Metadata = map[string]any{}
	}
	start, end := c.Start, c.End
	if len(c.Matches) == 0 || start < 0 || end < start || end > len(req.Code) {
		start, end = cursor, cursor
	}
	k.reply(ch, m, "complete_reply", map[string]any{
		"status":       "ok",
		"matches":      c.Matches,
		"cursor_start": byteToRune(req.Code, start),
		"cursor_end":   byteToRune(req.Code, end),
		"metadata":     c.Metadata,
	}, nil)
}

func (k *Kernel) handleInspect(ch *wire.Channel, m *wire.Message) {
	var req struct {
		Code        string `json:"code"`
		CursorPos   *int   `json:"cursor_pos"`
		DetailLevel int    `json:"detail_level"`
	}
	if err := m.DecodeContent(&req); err != nil {
		k.reply(ch, m, "inspect_reply", errorContent("BadRequest", err.Error(), nil), nil)
		return
	}
	cursor := len(req.Code)
	if req.CursorPos != nil {
		cursor = runeToByte(req.Code, *req.CursorPos)
	}
	data, found := k.interp.Inspect(req.Code, cursor, req.DetailLevel)
	bundle := map[string]any{}
	for mime, v := range data {
		bundle[mime] = v
	}
	k.reply(ch, m, "inspect_reply", map[string]any{
		"status": "ok", "found": found && len(bundle) > 0, "data": bundle, "metadata": map[string]any{},
	}, nil)
}

func (k *Kernel) handleIsComplete(ch *wire.Channel, m *wire.Message) {
	var req struct {
		Code string `json:"code"`
	}
	if err := m.DecodeContent(&req); err != nil {
		k.reply(ch, m, "is_complete_reply", map[string]any{"status": "unknown"}, nil)
		return
	}
	status, indent := k.interp.IsComplete(req.Code)
	switch status {
	case "complete", "invalid", "unknown":
		k.reply(ch, m, "is_complete_reply", map[string]any{"status": status}, nil)
	case "incomplete":
		k.reply(ch, m, "is_complete_reply", map[string]any{"status": status, "indent": indent}, nil)
	default:
		k.log.Printf("is_complete: interpreter answered %q; replying unknown", status)
		k.reply(ch, m, "is_complete_reply", map[string]any{"status": "unknown"}, nil)
	}
}

func (k *Kernel) handleHistory(ch *wire.Channel, m *wire.Message) {
	var req struct {
		Output         bool   `json:"output"`
		Raw            bool   `json:"raw"`
		HistAccessType string `json:"hist_access_type"`
		Session        int    `json:"session"`
		Start          int    `json:"start"`
		Stop           int    `json:"stop"`
		N              *int   `json:"n"`
		Pattern        string `json:"pattern"`
		Unique         bool   `json:"unique"`
	}
	if err := m.DecodeContent(&req); err != nil {
		k.reply(ch, m, "history_reply", errorContent("BadRequest", err.Error(), nil), nil)
		return
	}
	h := k.interp.History()
	var entries []HistoryEntry
	if h != nil {
		switch req.HistAccessType {
		case "tail":
			n := 10
			if req.N != nil {
				n = *req.N
			}
			entries = h.Tail(n)
		case "range":
			entries = h.Range(req.Session, req.Start, req.Stop)
		case "search":
			n := 0
			if req.N != nil {
				n = *req.N
			}
			pattern := req.Pattern
			if pattern == "" {
				pattern = "*"
			}
			entries = h.Search(pattern, n, req.Unique)
		default:
			k.reply(ch, m, "history_reply", errorContent("BadRequest",
				"hist_access_type "+jsonString(req.HistAccessType)+": want tail, range or search", nil), nil)
			return
		}
	}
	hist := make([][]any, 0, len(entries))
	for _, e := range entries {
		var in any = e.Input
		if req.Output {
			in = []any{e.Input, nil} // outputs are not kept
		}
		hist = append(hist, []any{e.Session, e.Line, in})
	}
	k.reply(ch, m, "history_reply", map[string]any{"status": "ok", "history": hist}, nil)
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func (k *Kernel) handleCommInfo(ch *wire.Channel, m *wire.Message) {
	k.reply(ch, m, "comm_info_reply", map[string]any{"status": "ok", "comms": map[string]any{}}, nil)
}

// handleCommOpen refuses comms (no widgets): it closes the comm at once, as
// a kernel without the target does.
func (k *Kernel) handleCommOpen(ch *wire.Channel, m *wire.Message) {
	var req struct {
		CommID     string `json:"comm_id"`
		TargetName string `json:"target_name"`
	}
	if m.DecodeContent(&req) != nil || req.CommID == "" {
		return
	}
	k.log.Printf("comm_open for target %q: no comm targets, closing it", req.TargetName)
	k.publish(m, "comm_close", map[string]any{"comm_id": req.CommID, "data": map[string]any{}})
}

func (k *Kernel) ignore(ch *wire.Channel, m *wire.Message) {}

func (k *Kernel) handleConnect(ch *wire.Channel, m *wire.Message) {
	c := k.cfg.Conn
	k.reply(ch, m, "connect_reply", map[string]any{
		"status": "ok", "shell_port": c.ShellPort, "iopub_port": c.IOPubPort,
		"stdin_port": c.StdinPort, "hb_port": c.HBPort, "control_port": c.ControlPort,
	}, nil)
}

func (k *Kernel) handleShutdown(ch *wire.Channel, m *wire.Message) {
	var req struct {
		Restart bool `json:"restart"`
	}
	_ = m.DecodeContent(&req)
	k.log.Printf("shutdown requested (restart %v)", req.Restart)
	k.interrupt()
	content := map[string]any{"status": "ok", "restart": req.Restart}
	k.reply(ch, m, "shutdown_reply", content, nil)
	k.publish(m, "shutdown_reply", content)
	k.stop()
}

func (k *Kernel) handleInterrupt(ch *wire.Channel, m *wire.Message) {
	k.interrupt()
	k.reply(ch, m, "interrupt_reply", map[string]any{"status": "ok"}, nil)
}

// handleDebug answers the debug adapter protocol with a failed response:
// there is no debugger (kernel_info says debugger false).
func (k *Kernel) handleDebug(ch *wire.Channel, m *wire.Message) {
	var req struct {
		Seq     int    `json:"seq"`
		Command string `json:"command"`
	}
	_ = m.DecodeContent(&req)
	k.reply(ch, m, "debug_reply", map[string]any{
		"type": "response", "request_seq": req.Seq, "success": false, "command": req.Command,
		"message": "qwengo has no debugger", "body": map[string]any{},
	}, nil)
}
