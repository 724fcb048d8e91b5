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

// CheckMatMulBackward validates the arguments of MatMulBackward (out = x·Wᵀ): dout [T, Out];
// dx, when present, [T, In] and not overlapping dout; x, when present, [T, In]; dw, when
// present, [Out, In], with x, and overlapping none of dout, x and dx. The checks run in this
// order, so both backends report the same fault first.
//
// It is generic over the backend's own tensor pointer type so that an absent tensor is simply
// a nil pointer (a nil pointer in a Tensor interface is not a nil interface), and overlap is
// the backend's own test of shared storage (host slices or device pointers); it must treat a
// nil tensor as overlapping nothing.
func CheckMatMulBackward[T interface {
	Tensor
	comparable
}](name string, dx, dw, dout, x T, w Weight, wname string, overlap func(a, b T) bool) error {
	const op = "matmul backward"
	var none T
	rows, n, k := dout.Rows(), w.Out(), w.In()
	switch {
	case dout.Cols() != n:
		return fmt.Errorf("%s: %s %s: dout [%d, %d] for a weight [%d, %d]", name, op, wname, rows, dout.Cols(), n, k)
	case dx != none && (dx.Rows() != rows || dx.Cols() != k):
		return fmt.Errorf("%s: %s %s: dx [%d, %d], want [%d, %d]", name, op, wname, dx.Rows(), dx.Cols(), rows, k)
	case dx != none && overlap(dx, dout):
		return fmt.Errorf("%s: %s %s: dx and dout share memory", name, op, wname)
	case x != none && (x.Rows() != rows || x.Cols() != k):
		return fmt.Errorf("%s: %s %s: x [%d, %d], want [%d, %d]", name, op, wname, x.Rows(), x.Cols(), rows, k)
	case dw != none && x == none:
		return fmt.Errorf("%s: %s %s: dw needs x", name, op, wname)
	case dw != none && (dw.Rows() != n || dw.Cols() != k):
		return fmt.Errorf("%s: %s %s: dw [%d, %d], want [%d, %d]", name, op, wname, dw.Rows(), dw.Cols(), n, k)
	case dw != none && (overlap(dw, dout) || overlap(dw, x) || overlap(dw, dx)):
		return fmt.Errorf("%s: %s %s: dw shares memory with dout, x or dx", name, op, wname)
	}
	return nil
}
