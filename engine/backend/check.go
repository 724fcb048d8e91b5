package backend

import "fmt"

// Shape checks shared by every backend, so the CPU reference and the GPU refuse exactly the
// same calls with the same words. name prefixes the error ("cpu", "cuda").

// CheckMatMul validates out[T, Out] = x[T, In] · Wᵀ (out must not be x).
func CheckMatMul(name string, out, x Tensor, w Weight, wname string) error {
	if x.Cols() != w.In() || out.Rows() != x.Rows() || out.Cols() != w.Out() {
		return fmt.Errorf("%s: matmul %s: x [%d, %d] · W[%d, %d]ᵀ into [%d, %d]", name, wname, x.Rows(), x.Cols(), w.Out(), w.In(), out.Rows(), out.Cols())
	}
	if out == x {
		return fmt.Errorf("%s: matmul %s: out and x are the same tensor", name, wname)
	}
	return nil
}

// CheckAttention validates causal GQA of q [T, nHeads*hd] over k, v [≥pos0+T, nKV*hd] into
// out [T, nHeads*hd] (out must not be q).
func CheckAttention(name string, out, q, k, v Tensor, pos0, nHeads, nKV, headDim int) error {
	T := q.Rows()
	if nHeads <= 0 || nKV <= 0 || headDim <= 0 || nHeads%nKV != 0 || pos0 < 0 ||
		q.Cols() != nHeads*headDim || k.Cols() != nKV*headDim || v.Cols() != nKV*headDim ||
		k.Rows() < pos0+T || v.Rows() < pos0+T || out.Rows() != T || out.Cols() != q.Cols() {
		return fmt.Errorf("%s: attention: q [%d, %d], k [%d, %d], v [%d, %d], out [%d, %d], position %d, heads %d/%d of %d",
			name, q.Rows(), q.Cols(), k.Rows(), k.Cols(), v.Rows(), v.Cols(), out.Rows(), out.Cols(), pos0, nHeads, nKV, headDim)
	}
	if out == q {
		return fmt.Errorf("%s: attention: out and q are the same tensor", name)
	}
	return nil
}
