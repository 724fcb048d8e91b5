package cuda

import (
	"compress/gzip"
	"embed"
	"fmt"
	"io"
	"strings"
)

// The kernels' PTX, generated from kernels/*.cu by gen_ptx.sh (nvcc -ptx -arch=sm_90), and
// each PTX's sm_90 machine code (ptxas -arch=sm_90 -O3, gzipped in kernels/*.sm_90.cubin.gz,
// the PTX's SHA-256 in kernels/cubins.sum), all committed, so building the backend needs the
// CUDA headers but no compiler. On a compute capability 9.0 GPU (H100, H200) the backend loads
// the cubins; elsewhere, or with QWENGO_CUDA_JIT=1, the driver JIT-compiles the PTX (tens of
// seconds on a machine's first open, then cached by the driver). This file has no build tag so
// that tests without a GPU can check the embedded modules.

//go:embed kernels/*.ptx kernels/*.sm_90.cubin.gz kernels/cubins.sum
var kernelFS embed.FS

// cubinFile is the sm_90 machine code gen_ptx.sh assembles from a module's PTX file, gzipped.
func cubinFile(ptxFile string) string {
	return strings.TrimSuffix(ptxFile, ".ptx") + ".sm_90.cubin.gz"
}

// readCubin returns the embedded sm_90 cubin of a module's PTX file, unzipped.
func readCubin(ptxFile string) ([]byte, error) {
	f, err := kernelFS.Open(cubinFile(ptxFile))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cubinFile(ptxFile), err)
	}
	img, err := io.ReadAll(z)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cubinFile(ptxFile), err)
	}
	return img, nil
}

// cubinRelease returns the ptxas release that assembled the cubins ("release 11.8, V11.8.89",
// from cubins.sum's first line), or "".
func cubinRelease() string {
	sums, err := kernelFS.ReadFile("kernels/cubins.sum")
	if err != nil {
		return ""
	}
	first, _, _ := strings.Cut(string(sums), "\n")
	rel, _ := strings.CutPrefix(first, "# ptxas: ")
	if rel == first {
		return ""
	}
	return strings.TrimSpace(rel)
}

// ptxModule is one PTX file and the kernels the backend launches from it.
type ptxModule struct {
	file    string
	kernels []string
}

// gemvKernels are the decode-shaped matmul kernels, one per weight kind and token count: 1..4
// for NVFP4, 1..8 for bf16 and f32.
var gemvKernels = []string{
	"gemv_nvfp4_t1", "gemv_nvfp4_t2", "gemv_nvfp4_t3", "gemv_nvfp4_t4",
	"gemv_bf16_t1", "gemv_bf16_t2", "gemv_bf16_t3", "gemv_bf16_t4",
	"gemv_bf16_t5", "gemv_bf16_t6", "gemv_bf16_t7", "gemv_bf16_t8",
	"gemv_f32_t1", "gemv_f32_t2", "gemv_f32_t3", "gemv_f32_t4",
	"gemv_f32_t5", "gemv_f32_t6", "gemv_f32_t7", "gemv_f32_t8",
}

// gemvStreamKernels are the streaming NVFP4 GEMV kernels for 1..4 token rows (gemv.cu).
var gemvStreamKernels = []string{"gemv_nvfp4s_t1", "gemv_nvfp4s_t2", "gemv_nvfp4s_t3", "gemv_nvfp4s_t4"}

// gemvTCVariants are the tensor-core GEMV kernels (gemv_tc.cu): W warps per block, D k steps
// of loads in flight per warp; gemvTCPick chooses per shape, QWENGO_CUDA_GEMV_TC forces one by
// its suffix ("8x3").
var gemvTCVariants = []string{"gemv_nvfp4_tc4x3", "gemv_nvfp4_tc8x3"}

// gemvTCBVariants are the kernel's (warps × k steps in flight) shapes; each comes in a one-pass
// (≤ 4 rows) and a two-pass (≤ 8 rows) version: gemv_nvfp4_tcb{P}_{W}x{D}.
var gemvTCBVariants = []string{"4x2", "8x2", "4x4", "8x4"}

// gemvTCBKernels lists every entry point of gemv_tcb.cu (ptx.go loads them).
var gemvTCBKernels = func() []string {
	var names []string
	for _, v := range gemvTCBVariants {
		names = append(names, "gemv_nvfp4_tcb1_"+v, "gemv_nvfp4_tcb2_"+v)
	}
	return names
}()

// gemvTCPVariants are the kernel's (warps × steps in flight) shapes; each comes in a one-pass
// (≤ 4 rows) and a two-pass (≤ 8 rows) version: gemv_nvfp4_tcp{P}_{W}x{D}. Six steps in flight
// spill at the 128-register cap that keeps 16 warps on an SM (ptxas sm_90), so D ≤ 4.
// Loads with ld.global.nc.L1::no_allocate.L2::256B instead of ld.global.nc measured the same
// (session 5 run 4) and went.
var gemvTCPVariants = []string{"4x3", "8x3", "4x4", "8x4"}

// gemvTCPKernels lists every entry point of gemv_tcp.cu (ptx.go loads them).
var gemvTCPKernels = func() []string {
	var names []string
	for _, v := range gemvTCPVariants {
		names = append(names, "gemv_nvfp4_tcp1_"+v, "gemv_nvfp4_tcp2_"+v)
	}
	for _, f := range []string{"_norm", "_swiacc", "_acc"} { // the fused decode forms (gemv_tcp.go)
		names = append(names, "gemv_nvfp4_tcp1_8x4"+f, "gemv_nvfp4_tcp2_8x4"+f)
	}
	for _, f := range []string{"", "_norm", "_swiacc", "_acc"} { // two passes' per-step consume loop (gemv_tcp.go gemvTCPStepLoop)
		names = append(names, "gemv_nvfp4_tcp2_8x4"+f+"_v0")
	}
	for _, f := range []string{"", "_norm", "_acc"} { // one pass, K slices merged in the block (gemv_tcp.go gemvTCPBlockMerge)
		names = append(names, "gemv_nvfp4_tcp1_8x4"+f+"_bm")
	}
	// the per-tile merge's measurement forms (gemv_tcp.go gemvTCPMerge0)
	names = append(names, "gemv_nvfp4_tcp1_8x4_swiacc_m0", "gemv_nvfp4_tcp2_8x4_m0")
	// the one-row column-scale forms (gemv_tcp.go tcpOneRow)
	for _, f := range []string{"", "_norm", "_swiacc", "_acc", "_bm", "_norm_bm", "_acc_bm", "_swiacc_m0"} {
		names = append(names, "gemv_nvfp4_tcp1_8x4"+f+"_cs")
	}
	return append(names, gemvProbeKernels...)
}()

// gemvProbeKernels are measurement probes (gemv_tcp.cu): two read a codes matrix without
// computing, one is gemv_tcp without the merge of its K slices; the figures test times them to
// bound what the access pattern and the merge cost.
var gemvProbeKernels = []string{"gemv_probe_tile", "gemv_probe_flat", "gemv_nvfp4_tcp1_8x4_nomerge"}

// gemvPersistKernels are the persistent NVFP4 GEMV kernels for 1..4 token rows (gemv.cu).
var gemvPersistKernels = []string{"gemv_nvfp4p_t1", "gemv_nvfp4p_t2", "gemv_nvfp4p_t3", "gemv_nvfp4p_t4"}

// trainKernels are the training ops' kernels (train.cu, launched from training.go).
var trainKernels = []string{
	"scale_f32", "sumsq_part_f32", "sumsq_part_bf16", "mm_bwd_dx_f32", "mm_bwd_dx_bf16", "mm_bwd_dx_nvfp4", "mm_bwd_dw_f32", "mm_bwd_dw_bf16",
	"rmsnorm_bwd_dx", "rmsnorm_rstd", "rmsnorm_bwd_dw_part", "sum_parts_add", "rope_bwd_f32", "swiglu_bwd_f32",
	"embedding_bwd_f32", "attn_bwd_dq", "attn_bwd_dkv", "cross_entropy_f32",
	"adamw_f32_fp32", "adamw_bf16_fp32", "adamw_f32_int8", "adamw_bf16_int8", "div_pos_check", "adamw_probe",
	"adamw_many_f32_fp32", "adamw_many_bf16_fp32", "adamw_many_f32_int8", "adamw_many_bf16_int8",
	// AdamW's bf16-gradient forms (backend.GradientFormat)
	"adamw_f32_fp32_gb", "adamw_bf16_fp32_gb", "adamw_f32_int8_gb", "adamw_bf16_int8_gb", "adamw_probe_gb",
	"adamw_many_f32_fp32_gb", "adamw_many_bf16_fp32_gb", "adamw_many_f32_int8_gb", "adamw_many_bf16_int8_gb",
	"adamw_bf16_int8_st", "adamw_bf16_int8_gb_st", // the staged single-parameter kernels (training.go adamOneArgs)
	// TestFiguresAdamWTraffic's probes (not used by the engine)
	"adamw_traffic0", "adamw_traffic1", "adamw_traffic2", "adamw_traffic3", "adamw_traffic4", "adamw_traffic5",
	"copy_u4", "rmw_u4",
}

// optim4Kernels are AdamW's kernels for 4-bit moments (optim4.cu, launched from optim4.go).
var optim4Kernels = []string{"adamw4_vmax", "adamw_f32_4bit", "adamw_bf16_4bit",
	"adamw4_vmax_gb", "adamw_f32_4bit_gb", "adamw_bf16_4bit_gb"}

// gemvTCPStampedKernels are gemv_tcp_st.cu's stamped copies of the decode GEMV forms
// (gemv_stamps.go): each is its form's name + "_st".
var gemvTCPStampedKernels = []string{"gemv_nvfp4_tcp1_8x4_bm_st", "gemv_nvfp4_tcp1_8x4_norm_bm_st",
	"gemv_nvfp4_tcp1_8x4_acc_bm_st", "gemv_nvfp4_tcp1_8x4_swiacc_st", "gemv_nvfp4_tcp2_8x4_st",
	"gemv_nvfp4_tcp2_8x4_norm_st", "gemv_nvfp4_tcp2_8x4_swiacc_st", "gemv_nvfp4_tcp2_8x4_acc_st",
	"gemv_nvfp4_tcp1_8x4_norm_bm_cs_st", "gemv_nvfp4_tcp1_8x4_acc_bm_cs_st", "gemv_nvfp4_tcp1_8x4_bm_cs_st",
	"gemv_nvfp4_tcp1_8x4_swiacc_cs_st"}

// lazyPTXModules are loaded on first use (Backend.loadLazyPTX), not when the backend opens:
// measurement tools whose JIT compilation every user would otherwise wait for.
var lazyPTXModules = []ptxModule{
	{"kernels/gemv_tcp_st.ptx", gemvTCPStampedKernels},
}

var ptxModules = []ptxModule{
	{"kernels/train.ptx", trainKernels},
	{"kernels/optim4.ptx", optim4Kernels},
	{"kernels/pack.ptx", []string{"bf16_pack", "bf16_unpack"}},
	{"kernels/grad_bf16.ptx", []string{"embedding_bwd_bf16"}},
	{"kernels/fused.ptx", []string{"add_rmsnorm_f32", "qk_norm_rope_cache", "qk_norm_rope_cache_kb"}},
	{"kernels/gemv.ptx", append(append([]string{}, gemvStreamKernels...), gemvPersistKernels...)},
	{"kernels/elementwise.ptx", []string{"embedding_f32", "embedding_bf16", "embedding_nvfp4", "swiglu_f32", "add_f32", "argmax_rows_f32"}},
	{"kernels/norm.ptx", []string{"rmsnorm_f32", "rope_f32"}},
	{"kernels/norm_warp.ptx", []string{"rmsnorm_warp_f32", "rmsnorm_rstd_warp", "rmsnorm_bwd_dx_warp"}},
	{"kernels/gemv_tc.ptx", gemvTCVariants},
	{"kernels/gemv_tcb.ptx", gemvTCBKernels},
	{"kernels/gemv_tcp.ptx", gemvTCPKernels},
	{"kernels/flash.ptx", []string{"flash_attn_fwd"}},
	{"kernels/decode_layers.ptx", []string{"decode_layers_g1", "decode_layers_g2", "decode_layers_g4", "decode_layers_g8"}},
	{"kernels/flash_bwd.ptx", []string{"flash_bwd_prep", "flash_bwd_dkdv", "flash_bwd_dq"}},
	{"kernels/batch.ptx", []string{"rope_at_f32", "scatter_rows_f32", "scatter_rows_kb", "qk_norm_rope_cache_at",
		"qk_norm_rope_cache_at_kb", "attention_batch_split_f32", "attention_batch_split_f32_kb", "attention_batch_combine_f32",
		"attention_batch_decode_f32", "attention_batch_decode_f32_kb", "attention_batch_decode_r1", "attention_batch_decode_r2",
		"attention_batch_decode_r4", "attention_batch_decode_r1_kb", "attention_batch_decode_r2_kb", "attention_batch_decode_r4_kb"}},
	{"kernels/attention.ptx", []string{"attention_f32", "attention_f32_kb", "attention_split_f32", "attention_split_f32_kb",
		"attention_combine_f32", "attention_decode_f32", "attention_decode_f32_kb", "attention_decode_r1", "attention_decode_r2",
		"attention_decode_r4", "attention_decode_r1_kb", "attention_decode_r2_kb", "attention_decode_r4_kb",
		"attention_decode_nr1", "attention_decode_nr2", "attention_decode_nr4", "attention_decode_nr1_kb", "attention_decode_nr2_kb",
		"attention_decode_nr4_kb"}},
	{"kernels/probe.ptx", []string{"chain_link", "barrier_rounds", "flag_relay"}}, // TestFiguresLaunchChain's probes
	{"kernels/convert.ptx", []string{"f32_to_bf16", "nvfp4_to_bf16", "f32_to_bf16_hilo", "add_halves_f32"}},
	{"kernels/matmul.ptx", append([]string{"matmul_tiled_f32", "matmul_tiled_bf16", "matmul_tiled_nvfp4"}, gemvKernels...)},
}
