package wire

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
)

func greeting() []byte {
	g := make([]byte, 64)
	g[0], g[9], g[10] = 0xFF, 0x7F, 3
	copy(g[12:], "NULL")
	return g
}

func longFrame(flags byte, size uint64) []byte {
	b := []byte{flags | 0x02, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint64(b[1:], size)
	return b
}

func TestGuardScan(t *testing.T) {
	ok := append(greeting(), 0x04, 5, 'R', 'E', 'A', 'D', 'Y') // short command
	ok = append(ok, 0x01, 0)                                   // empty frame, more
	ok = append(ok, longFrame(0, 300)...)
	ok = append(ok, bytes.Repeat([]byte{'x'}, 300)...)
	ok = append(ok, 0x00, 2, 'h', 'i')
	bad := append(greeting(), longFrame(0x04, 1<<62)...)
	tests := []struct {
		name  string
		data  []byte
		chunk int
		fail  bool
	}{
		{"valid whole", ok, len(ok), false},
		{"valid byte by byte", ok, 1, false},
		{"valid in 7s", ok, 7, false},
		{"oversized whole", bad, len(bad), true},
		{"oversized byte by byte", bad, 1, true},
		{"just over the limit", append(greeting(), longFrame(0, MaxFrameSize+1)...), 3, true},
		{"at the limit", append(greeting(), longFrame(0, MaxFrameSize)...), 3, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &guardConn{greeting: zmtpGreeting}
			var err error
			for d := tt.data; len(d) > 0 && err == nil; {
				k := min(tt.chunk, len(d))
				err = c.scan(d[:k])
				d = d[k:]
			}
			if tt.fail != (err != nil) {
				t.Fatalf("err = %v, want failure %v", err, tt.fail)
			}
			if err != nil && !errors.Is(err, errFrameTooLarge) {
				t.Fatalf("err = %v", err)
			}
			if !tt.fail && tt.name != "at the limit" && c.state != 0 {
				t.Fatalf("ended in state %d", c.state)
			}
		})
	}
}

// TestHugeFrameHeaderDoesNotCrash announces a 4 EiB frame to the shell
// socket: zmq4 alone would try to allocate it and kill the process.
func TestHugeFrameHeaderDoesNotCrash(t *testing.T) {
	ci := &ConnectionInfo{Transport: "tcp", IP: "127.0.0.1", SignatureScheme: "hmac-sha256", Key: "k"}
	sess := NewSession("k")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	socks, err := Listen(ctx, ci, sess, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer socks.Close()
	conn, err := net.Dial("tcp", ci.Endpoint(ci.ShellPort)[len("tcp://"):])
	if err != nil {
		t.Fatal(err)
	}
	conn.Write(greeting())
	conn.Write(longFrame(0x04, 1<<62))
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	// The kernel closes the connection (after sending its own greeting).
	if _, err := io.Copy(io.Discard, conn); err != nil {
		t.Fatalf("connection not closed: %v", err)
	}
	conn.Close()
	// The socket still serves a well-behaved client.
	dealer := zmq4.NewDealer(ctx, zmq4.WithID(zmq4.SocketIdentity("good")))
	defer dealer.Close()
	if err := dealer.Dial(ci.Endpoint(ci.ShellPort)); err != nil {
		t.Fatal(err)
	}
	m, _ := sess.NewMessage("kernel_info_request", nil, nil, nil)
	dealer.SendMulti(zmq4.NewMsgFrom(sess.Encode(m)...))
	f, err := socks.Shell.RecvFrames()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := sess.Decode(f); err != nil || got.Header.MsgID != m.Header.MsgID {
		t.Fatalf("after the attack: %v %v", got, err)
	}
}
