package wire

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
)

// ConnectionInfo is the content of a Jupyter connection file: where the five
// channels listen and how messages are signed.
type ConnectionInfo struct {
	Transport       string `json:"transport"`        // "tcp" or "ipc"
	IP              string `json:"ip"`               // address for tcp, path prefix for ipc
	ShellPort       int    `json:"shell_port"`       // ROUTER: requests and replies
	IOPubPort       int    `json:"iopub_port"`       // PUB: broadcast side effects
	StdinPort       int    `json:"stdin_port"`       // ROUTER: input_request / input_reply
	ControlPort     int    `json:"control_port"`     // ROUTER: shutdown, interrupt, answered while busy
	HBPort          int    `json:"hb_port"`          // REP: heartbeat echo
	SignatureScheme string `json:"signature_scheme"` // "hmac-sha256" (empty means the same)
	Key             string `json:"key"`              // HMAC key; empty disables signing
	KernelName      string `json:"kernel_name,omitempty"`
}

// ReadConnectionFile reads and validates the connection file at path.
func ReadConnectionFile(path string) (*ConnectionInfo, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("connection file: %w", err)
	}
	ci, err := ParseConnection(data)
	if err != nil {
		return nil, fmt.Errorf("connection file %s: %w", path, err)
	}
	return ci, nil
}

// ParseConnection decodes and validates connection-file JSON. A missing
// transport means tcp; a missing signature scheme means hmac-sha256. Port 0
// asks Listen to pick a free port (tcp only).
func ParseConnection(data []byte) (*ConnectionInfo, error) {
	var ci ConnectionInfo
	if err := json.Unmarshal(data, &ci); err != nil {
		return nil, fmt.Errorf("parse JSON: %w", err)
	}
	if ci.Transport == "" {
		ci.Transport = "tcp"
	}
	if ci.SignatureScheme == "" {
		ci.SignatureScheme = "hmac-sha256"
	}
	if err := ci.Validate(); err != nil {
		return nil, err
	}
	return &ci, nil
}

// Validate checks the transport, address, ports and signature scheme.
func (ci *ConnectionInfo) Validate() error {
	switch ci.Transport {
	case "tcp", "ipc":
	default:
		return fmt.Errorf("transport %q: want \"tcp\" or \"ipc\"", ci.Transport)
	}
	if ci.IP == "" {
		return errors.New("ip: empty")
	}
	if ci.SignatureScheme != "hmac-sha256" {
		return fmt.Errorf("signature_scheme %q: only \"hmac-sha256\" is supported", ci.SignatureScheme)
	}
	for _, p := range []struct {
		name string
		port int
	}{{"shell_port", ci.ShellPort}, {"iopub_port", ci.IOPubPort}, {"stdin_port", ci.StdinPort},
		{"control_port", ci.ControlPort}, {"hb_port", ci.HBPort}} {
		if p.port < 0 || p.port > 65535 {
			return fmt.Errorf("%s %d: out of range 0..65535", p.name, p.port)
		}
		if p.port == 0 && ci.Transport == "ipc" {
			return fmt.Errorf("%s: ipc transport needs an explicit port number", p.name)
		}
	}
	return nil
}

// Endpoint returns the ZeroMQ endpoint for port: tcp://IP:PORT, or
// ipc://IP-PORT as jupyter_client names ipc sockets.
func (ci *ConnectionInfo) Endpoint(port int) string {
	if ci.Transport == "ipc" {
		return "ipc://" + ci.IP + "-" + strconv.Itoa(port)
	}
	host := ci.IP
	if host == "*" {
		host = "0.0.0.0"
	}
	if isIPv6(host) {
		host = "[" + host + "]"
	}
	return "tcp://" + host + ":" + strconv.Itoa(port)
}

func isIPv6(h string) bool {
	for i := 0; i < len(h); i++ {
		if h[i] == ':' {
			return h[0] != '['
		}
	}
	return false
}
