// Package console is the terminal front end of qwengo, as a library so it
// can be tested without a terminal: the read-eval-print loop behind
// `qwenrepl`, its chat mode, and the client side of the Jupyter messaging
// protocol behind `qwenrepl --existing`.
//
// The loop (Console) drives an Interpreter: the in-process interpreter
// session (kernel/session, adapted in kernel/cmd/qwenrepl) or a running
// kernel (Remote). Like IPython's console it shows "In [n]: " prompts, asks
// the interpreter whether the input is complete (an open brace continues on
// a "   ...: " line pre-filled with the indent), completes with Tab from the
// interpreter's completer over the whole cell entered so far, prints a
// trailing expression's text/plain as "Out[n]: " (other MIME types are
// summarised, "[image/png 12 KB]"), and keeps the input history in
// $XDG_STATE_HOME/qwengo/history. Line editing is github.com/peterh/liner.
//
// Ctrl-C at the prompt clears the line; while a cell runs it interrupts the
// cell (Interpreter.Interrupt and the cell's context), never the console;
// repeated Ctrl-C on a cell that ignores interrupts offers to quit. Ctrl-D
// exits. Input starting with ':' is a console command (:help, :chat, :go,
// :quit); magics (%time, !cmd, ...) are the interpreter's.
//
// Chat mode (`:chat [MODEL]`) sends plain-text lines to a Chatter, a
// conversation with a loaded model whose KV cache persists across turns, and
// streams the reply; slash commands (/reset, /system, /temp, /topp, /max,
// /stats) adjust it (ChatCommand). The engine side provides Chatters through
// RegisterChat; without one, :chat says that chat needs a loaded model.
//
// Remote implements Interpreter over the five Jupyter channels with
// github.com/go-zeromq/zmq4 and kernel/wire (HMAC-SHA256 signing with the
// connection file's key): execute_request with iopub output passed to the
// console's IO, input_request answered on stdin, interrupt_request on
// control, complete_request and is_complete_request for the line editor.
package console
