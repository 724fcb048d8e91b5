// Package nvfp4 is the NVFP4 codec of the engine, in pure Go.
//
// NVFP4 stores a matrix row by row in blocks of BlockSize (16) consecutive elements along the
// input (last) dimension. Each element is a 4-bit E2M1 code (sign bit 3, magnitude index in
// bits 0-2, magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6); each block has an FP8 E4M3 scale
// (float8_e4m3fn); the tensor has one FP32 scale g. An element decodes as
//
//	x = E2M1[code] * (float32(scale) * g)
//
// which is exactly how torch dequantises, so decoded values are bit-identical to ModelOpt's.
// Packing follows the checkpoints: byte j of a row holds element 2j in the low nibble and 2j+1
// in the high nibble.
//
// Design:
//   - Matrix is plain data (Rows, Cols, Packed, Scales, Global) so loaders can wrap file bytes
//     without copying; Validate checks sizes and scales before use.
//   - Two quantisers share the Matrix type and the decoder. QuantizeModelOpt follows NVIDIA
//     ModelOpt (the layout vLLM and TensorRT-LLM load) bit for bit in float32, ties to the even
//     E2M1 code. QuantizeSeed reproduces the seed project's variant (no tensor scale, scales
//     clamped to [2^-16, 448], ties away from zero) so its .dat files can be rewritten byte for
//     byte, including its known flaw: a block whose amax is below about 0.0059 decodes to zeros.
//   - Encoding is table driven: E2M1 rounding is one lookup in a 4096-entry table indexed by
//     the float32's sign, exponent, top two mantissa bits and an "exactly on the bucket start"
//     bit (every rounding boundary has at most two mantissa bits, so no boundary falls inside a
//     bucket). E4M3 encoding rounds the float32 bits to nearest even directly.
//   - Decoding (DecodeRows, used per tile by the CPU matmul) looks each packed byte up in a
//     256-entry table of value pairs and multiplies by the block's float32(scale)*g; it
//     allocates nothing.
//   - Large matrices are quantised on GOMAXPROCS goroutines, split by rows; the result does
//     not depend on the split.
//
// The 4-bit optimizer-state codes (which must not be able to output zero) live elsewhere:
// E2M1 has an exact zero and is wrong for second moments.
package nvfp4

// BlockSize is the number of consecutive elements along a row that share one E4M3 scale.
const BlockSize = 16
