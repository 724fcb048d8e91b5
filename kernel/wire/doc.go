// Package wire is the Jupyter messaging protocol's transport layer for the
// qwengo kernel: connection files, the five ZeroMQ sockets
// (github.com/go-zeromq/zmq4: ROUTER shell, control and stdin, PUB iopub, REP
// heartbeat, over tcp or ipc), and the multipart message codec.
//
// A message on the wire is
//
//	identities... "<IDS|MSG>" signature header parent_header metadata content buffers...
//
// where signature is the hex HMAC-SHA256 of the four JSON parts under the
// connection file's key (empty key: no signing). Decode checks the delimiter
// and frame count before indexing anything, verifies the signature in
// constant time before parsing JSON, and returns typed errors (ErrUnsigned,
// ErrBadSignature, ...) instead of panicking, so the kernel can drop and log
// forged or malformed messages. Every message a Session creates has a fresh
// msg_id, the process's own session id and protocol version ProtocolVersion.
//
// This package knows nothing about message semantics; package kernel maps
// message types to handlers.
package wire
