package wire

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
)

func TestParseConnection(t *testing.T) {
	tests := []struct {
		name    string
		json    string
		wantErr string
		check   func(*ConnectionInfo) string
	}{
		{name: "tcp", json: `{"transport":"tcp","ip":"127.0.0.1","shell_port":5001,"iopub_port":5002,"stdin_port":5003,"control_port":5004,"hb_port":5005,"signature_scheme":"hmac-sha256","key":"abc","kernel_name":"qwengo"}`,
			check: func(c *ConnectionInfo) string {
				if c.Endpoint(c.ShellPort) != "tcp://127.0.0.1:5001" || c.Key != "abc" || c.HBPort != 5005 {
					return "fields"
				}
				return ""
			}},
		{name: "defaults", json: `{"ip":"127.0.0.1","shell_port":1}`, check: func(c *ConnectionInfo) string {
			if c.Transport != "tcp" || c.SignatureScheme != "hmac-sha256" {
				return "defaults not applied"
			}
			return ""
		}},
		{name: "ipc", json: `{"transport":"ipc","ip":"/tmp/k","shell_port":1,"iopub_port":2,"stdin_port":3,"control_port":4,"hb_port":5}`,
			check: func(c *ConnectionInfo) string {
				if c.Endpoint(c.IOPubPort) != "ipc:///tmp/k-2" {
					return "endpoint " + c.Endpoint(c.IOPubPort)
				}
				return ""
			}},
		{name: "ipv6", json: `{"ip":"::1","shell_port":7}`, check: func(c *ConnectionInfo) string {
			if c.Endpoint(7) != "tcp://[::1]:7" {
				return c.Endpoint(7)
			}
			return ""
		}},
		{name: "bad transport", json: `{"transport":"udp","ip":"x"}`, wantErr: `transport "udp"`},
		{name: "bad scheme", json: `{"ip":"x","signature_scheme":"hmac-md5"}`, wantErr: `signature_scheme "hmac-md5"`},
		{name: "no ip", json: `{"shell_port":1}`, wantErr: "ip: empty"},
		{name: "port range", json: `{"ip":"x","hb_port":70000}`, wantErr: "hb_port 70000"},
		{name: "ipc port 0", json: `{"transport":"ipc","ip":"/tmp/k"}`, wantErr: "explicit port"},
		{name: "not json", json: `{"ip":`, wantErr: "parse JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConnection([]byte(tt.json))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if msg := tt.check(c); msg != "" {
				t.Fatal(msg)
			}
		})
	}
}

func TestReadConnectionFileNamesPath(t *testing.T) {
	p := filepath.Join(t.TempDir(), "conn.json")
	os.WriteFile(p, []byte(`{"ip":""}`), 0o600)
	_, err := ReadConnectionFile(p)
	if err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("err = %v, want it to name %s", err, p)
	}
}

// frames builds a wire message by hand, signed with key.
func frames(key string, ids []string, header, parent, meta, content string, bufs ...string) [][]byte {
	s := NewSession(key)
	var f [][]byte
	for _, id := range ids {
		f = append(f, []byte(id))
	}
	f = append(f, []byte(Delimiter), []byte(s.Sign([]byte(header), []byte(parent), []byte(meta), []byte(content))),
		[]byte(header), []byte(parent), []byte(meta), []byte(content))
	for _, b := range bufs {
		f = append(f, []byte(b))
	}
	return f
}

const hdr = `{"msg_id":"m1","session":"s1","username":"u","date":"2024-01-01T00:00:00Z","msg_type":"execute_request","version":"5.3"}`

func TestDecode(t *testing.T) {
	good := frames("key", []string{"id1", "id2"}, hdr, `{}`, `{}`, `{"code":"1+1"}`, "buf0", "buf1")
	tests := []struct {
		name   string
		key    string
		frames [][]byte
		want   error // nil: success
	}{
		{"valid signed", "key", good, nil},
		{"valid unsigned, no key", "", frames("", nil, hdr, `{}`, `{}`, `{}`), nil},
		{"no key ignores signature", "", good, nil},
		{"wrong key", "other", good, ErrBadSignature},
		{"unsigned with key", "key", frames("", nil, hdr, `{}`, `{}`, `{}`), ErrUnsigned},
		{"tampered content", "key", func() [][]byte {
			f := frames("key", nil, hdr, `{}`, `{}`, `{"code":"1"}`)
			f[5] = []byte(`{"code":"rm -rf"}`)
			return f
		}(), ErrBadSignature},
		{"non-hex signature", "key", func() [][]byte {
			f := frames("key", nil, hdr, `{}`, `{}`, `{}`)
			f[1] = []byte("zz")
			return f
		}(), ErrBadSignature},
		{"truncated signature", "key", func() [][]byte {
			f := frames("key", nil, hdr, `{}`, `{}`, `{}`)
			f[1] = f[1][:10]
			return f
		}(), ErrBadSignature},
		{"no frames", "key", nil, ErrNoDelimiter},
		{"no delimiter", "key", [][]byte{[]byte("a"), []byte("b")}, ErrNoDelimiter},
		{"delimiter only", "key", [][]byte{[]byte(Delimiter)}, ErrShortMessage},
		{"four after delimiter", "", [][]byte{[]byte(Delimiter), nil, []byte(hdr), []byte("{}"), []byte("{}")}, ErrShortMessage},
		{"header not json", "", frames("", nil, `{"msg_id":`, `{}`, `{}`, `{}`), ErrBadJSON},
		{"header array", "", frames("", nil, `[]`, `{}`, `{}`, `{}`), ErrBadJSON},
		{"content string", "", frames("", nil, hdr, `{}`, `{}`, `"x"`), ErrBadJSON},
		{"parent empty", "", frames("", nil, hdr, ``, `{}`, `{}`), ErrBadJSON},
		{"no msg_type", "", frames("", nil, `{"msg_id":"x"}`, `{}`, `{}`, `{}`), ErrBadJSON},
		{"msg_type wrong type", "", frames("", nil, `{"msg_type":3}`, `{}`, `{}`, `{}`), ErrBadJSON},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := NewSession(tt.key).Decode(tt.frames)
			if tt.want != nil {
				if !errors.Is(err, tt.want) {
					t.Fatalf("err = %v, want %v", err, tt.want)
				}
				if m != nil {
					t.Fatal("message returned with error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.Header.MsgType != "execute_request" {
				t.Fatalf("msg_type %q", m.Header.MsgType)
			}
		})
	}
	m, err := NewSession("key").Decode(good)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Identities) != 2 || string(m.Identities[1]) != "id2" {
		t.Errorf("identities %q", m.Identities)
	}
	if len(m.Buffers) != 2 || string(m.Buffers[1]) != "buf1" {
		t.Errorf("buffers %q", m.Buffers)
	}
	var c struct{ Code string }
	if err := m.DecodeContent(&c); err != nil || c.Code != "1+1" {
		t.Errorf("content %q %v", c.Code, err)
	}
}

func TestNewMessageAndRoundTrip(t *testing.T) {
	s := NewSession("secret")
	req, err := s.Decode(frames("secret", []string{"client"}, hdr, `{}`, `{}`, `{}`))
	if err != nil {
		t.Fatal(err)
	}
	r1, err := s.NewMessage("execute_reply", req, map[string]any{"status": "ok"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r2, _ := s.NewMessage("execute_reply", req, map[string]any{"status": "ok"}, nil)
	if r1.Header.MsgID == r2.Header.MsgID || r1.Header.MsgID == "" {
		t.Errorf("msg ids not fresh: %q %q", r1.Header.MsgID, r2.Header.MsgID)
	}
	if r1.Header.Session != s.ID || NewSession("secret").ID == s.ID {
		t.Errorf("session id %q vs %q", r1.Header.Session, s.ID)
	}
	if r1.Header.Version != ProtocolVersion || r1.Header.Date == "" {
		t.Errorf("header %+v", r1.Header)
	}
	if !bytes.Equal(r1.Parent, []byte(hdr)) {
		t.Errorf("parent %s", r1.Parent)
	}
	if r1.ParentHeader().MsgID != "m1" {
		t.Errorf("parent msg_id %q", r1.ParentHeader().MsgID)
	}
	if len(r1.Identities) != 1 || string(r1.Identities[0]) != "client" {
		t.Errorf("identities %q", r1.Identities)
	}
	r1.Buffers = [][]byte{{0, 1, 2}}
	back, err := s.Decode(s.Encode(r1))
	if err != nil {
		t.Fatal(err)
	}
	if back.Header != r1.Header || string(back.Content) != `{"status":"ok"}` || string(back.Metadata) != "{}" || len(back.Buffers) != 1 {
		t.Errorf("round trip %+v", back)
	}
	// A message signed by another key is rejected.
	if _, err := NewSession("other").Decode(s.Encode(r1)); !errors.Is(err, ErrBadSignature) {
		t.Errorf("foreign key: %v", err)
	}
	if _, err := s.NewMessage("x", nil, []int{1}, nil); err == nil {
		t.Error("content that is not an object accepted")
	}
	if _, err := s.NewMessage("x", nil, map[string]any{"f": func() {}}, nil); err == nil {
		t.Error("unmarshalable content accepted")
	}
	orphan, _ := s.NewMessage("status", nil, nil, nil)
	if string(orphan.Parent) != "{}" || string(orphan.Content) != "{}" {
		t.Errorf("orphan %s %s", orphan.Parent, orphan.Content)
	}
}

func TestSocketsRoundTrip(t *testing.T) {
	for _, transport := range []string{"tcp", "ipc"} {
		t.Run(transport, func(t *testing.T) {
			ci := &ConnectionInfo{Transport: transport, IP: "127.0.0.1", SignatureScheme: "hmac-sha256", Key: "k"}
			if transport == "ipc" {
				ci.IP = filepath.Join(t.TempDir(), "kernel")
				ci.ShellPort, ci.IOPubPort, ci.StdinPort, ci.ControlPort, ci.HBPort = 1, 2, 3, 4, 5
			}
			sess := NewSession("k")
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			socks, err := Listen(ctx, ci, sess, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer socks.Close()
			if ci.ShellPort == 0 || ci.HBPort == 0 {
				t.Fatalf("ports not filled: %+v", ci)
			}
			go socks.Heartbeat()

			hb := zmq4.NewReq(ctx)
			defer hb.Close()
			if err := hb.Dial(ci.Endpoint(ci.HBPort)); err != nil {
				t.Fatal(err)
			}
			hb.Send(zmq4.NewMsg([]byte("ping")))
			pong, err := hb.Recv()
			if err != nil || string(pong.Frames[0]) != "ping" {
				t.Fatalf("heartbeat %q %v", pong.Frames, err)
			}

			dealer := zmq4.NewDealer(ctx, zmq4.WithID(zmq4.SocketIdentity("me")))
			defer dealer.Close()
			if err := dealer.Dial(ci.Endpoint(ci.ShellPort)); err != nil {
				t.Fatal(err)
			}
			req, _ := sess.NewMessage("kernel_info_request", nil, nil, nil)
			dealer.SendMulti(zmq4.NewMsgFrom(sess.Encode(req)...))
			f, err := socks.Shell.RecvFrames()
			if err != nil {
				t.Fatal(err)
			}
			got, err := sess.Decode(f)
			if err != nil {
				t.Fatal(err)
			}
			if string(got.Identities[0]) != "me" || got.Header.MsgID != req.Header.MsgID {
				t.Fatalf("request %+v", got)
			}
			rep, _ := sess.NewMessage("kernel_info_reply", got, map[string]string{"status": "ok"}, nil)
			if err := socks.Shell.Send(rep); err != nil {
				t.Fatal(err)
			}
			back, err := dealer.Recv()
			if err != nil {
				t.Fatal(err)
			}
			m, err := sess.Decode(back.Frames)
			if err != nil {
				t.Fatal(err)
			}
			var c map[string]string
			json.Unmarshal(m.Content, &c)
			if m.ParentHeader().MsgID != req.Header.MsgID || c["status"] != "ok" {
				t.Fatalf("reply %+v", m)
			}
		})
	}
}
