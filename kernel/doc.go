// Package kernel is the protocol side of the qwengo Jupyter kernel, split as
// ipykernel splits kernelbase from ipkernel: this package owns the wire
// (sockets, signing, message types, status, ordering) and delegates the Go
// language to an Interpreter (kernel/session, adapted in cmd/qwenkernel).
//
// One table maps message types to handlers. dispatch wraps every request,
// on shell and on control, between "busy" and "idle" status messages whose
// parent is the request, and replies go back on the socket the request came
// from. Shell requests are handled one at a time; control requests
// (interrupt_request, shutdown_request, kernel_info_request, debug_request)
// have their own goroutine and are answered while a cell runs. "starting" is
// published once when the sockets are up.
//
// execute_request: the execution counter advances when store_history is
// true (silent forces it false); execute_input is broadcast unless silent;
// the cell runs with an IO whose stream output is coalesced for ~50 ms
// (zmq4 v0.17.0's PUB queue is unbounded, so a loop printing 100k lines must
// not become 100k messages); output written to file descriptors 1 and 2 by
// compiled code arrives through CapturedOutput (see kernel/capture) and is
// attributed to the running cell; the running cell's IO.Stream text is
// written into the same capture pipes, so interpreted and compiled output
// keep their relative order. Before display data, execute_result,
// error, execute_reply and idle the kernel flushes the capture and the
// coalescer, so output keeps its order. A trailing expression becomes
// execute_result; a failure becomes an error message (traceback never null)
// and, with stop_on_error, execute_requests already queued are answered with
// status "aborted". The execute_reply metadata carries "wall_time" (seconds)
// and, when the engine reports it, "peak_device_memory" (bytes).
//
// Interrupts (interrupt_request or SIGINT) cancel the cell's context and
// call Interpreter.Interrupt, which reports a compiled call that ignores
// cancellation and gives the cell up on the second interrupt. Should the
// cell still not return InterruptGrace after a second interrupt, the
// kernel abandons it itself (with a note on stderr), so the notebook is
// never stuck. IO.Input sends input_request on the stdin socket to the
// requester's identity and waits for input_reply (or the interrupt).
//
// Forged (bad or missing HMAC) and malformed messages are logged and
// dropped by the receive loops; panics in handlers and in the interpreter
// are recovered. Positions in complete and inspect requests are converted
// between the protocol's code points and Go's byte offsets here.
package kernel
