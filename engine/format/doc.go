// Package format reads and writes weight files: safetensors (one file, or shards listed by a
// model.safetensors.index.json) and the seed project's `.dat` (TorchSharp state-dict layout).
// It knows nothing about models: it gives generic, named tensors (engine/qwen3 maps names to
// a Qwen3 and groups NVFP4 weight/weight_scale/weight_scale_2 triples).
//
// # Design
//
// Every reader is lazy. Opening a file parses and validates its header (names, dtypes, shapes,
// byte ranges) against the file's length and keeps the *os.File; Read then reads one tensor
// with ReadAt into a fresh tensor.Host. Stream visits every tensor once, file by file in
// ascending offset, so a multi-gigabyte checkpoint loads in a single sequential pass with host
// memory bounded by its largest tensor. Read may be called from several goroutines at once.
//
// We write our own safetensors code rather than use github.com/nlpodyssey/safetensors because
// that library deserialises a whole file from one in-memory []byte: it cannot stream, so loading
// a 3 GB checkpoint would need 3 GB of host memory on top of the model.
//
// Untrusted input never drives an allocation by itself: a header length, entry count, key
// length, dimension count or payload size is checked against the bytes that remain in the
// file before anything is allocated from it. Malformed files give an *Error naming the file,
// the tensor (when one is concerned) and the byte offset; nothing in this package panics on
// bad input (FuzzSafetensorsHeader and FuzzDat check it).
//
// Writers are atomic: they write a temporary file in the destination directory, fsync it and
// rename it over the destination, so a crash leaves either the old file or the new one.
// WriteSafetensors pads the JSON header with spaces to a multiple of 8 bytes, as the reference
// implementation does. WriteDat writes minimal ULEB128 numbers and keeps every entry's exact
// elemType code, so opening a `.dat` and writing its entries back reproduces it byte for byte.
// The ...From variants take tensors one at a time from a callback, so an export also needs
// only one tensor in memory at a time.
package format
