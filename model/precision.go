package model

import (
	"fmt"

	"github.com/matsurgery/matsurgery/kernels"
)

// Precision says how activations meet the weights in the model's matrix
// products and scans.
type Precision string

const (
	// PrecisionF32 keeps every activation float32: a BF16 weight is
	// multiplied by float32 activations (a backend widens the weight). The
	// default; its results do not depend on whether Precision is set.
	PrecisionF32 Precision = "f32"
	// PrecisionBF16 is the arithmetic of a bf16 inference engine: the
	// activation entering a MatMul with a BF16 weight is first rounded to
	// bf16 (nearest even), so the product is bf16·bf16 with float32
	// accumulation and a float32 result (cuBLAS GemmEx on tensor cores on a
	// GPU); the Mamba layers' scan inputs x, B and C are rounded to bf16 too
	// (the tensor-core scan on a GPU). Everything else stays float32: the
	// residual stream, norms, activation functions, RoPE, softmax attention
	// and its KV cache, dt, A, D and the scan state. Products with float32
	// weights (a checkpoint stored in F16 or F32) are unchanged.
	PrecisionBF16 Precision = "bf16"
)

// ParsePrecision reads a precision name: "f32" (or "") and "bf16".
func ParsePrecision(s string) (Precision, error) {
	switch Precision(s) {
	case "", PrecisionF32:
		return PrecisionF32, nil
	case PrecisionBF16:
		return PrecisionBF16, nil
	}
	return "", fmt.Errorf("precision %q: want f32 or bf16", s)
}

// products runs the model's matrix products in its precision. In bf16 it
// holds the bf16 copies of the activations it rounds, one per activation
// shape, reused by every product of that shape (a backend runs its
// operations in order, so a copy is free again once the product that read
// it is queued).
type products struct {
	be   kernels.Backend
	bf16 bool
	// scanBF16: the backend's SSD scans take BF16 x, B and C. When false
	// (the CPU backend) the rounded values are widened back to float32,
	// which gives the scan the same inputs.
	scanBF16 bool
	// attnBF16: the backend's SoftmaxAttention takes BF16 q, k and v (the
	// CUDA backend: flash-attention's operand precision). In bf16 they
	// are then rounded first; otherwise attention stays float32.
	attnBF16 bool
	copies   map[shapeKey]kernels.Tensor
}

// shapeKey is a tensor shape of rank ≤ 4 as a map key, with a slot for
// operands of one shape that must coexist (attention's q, k and v).
type shapeKey struct {
	rank, slot int
	dims       [4]int
}

func keyOf(shape []int) (shapeKey, bool) {
	k := shapeKey{rank: len(shape)}
	if len(shape) > len(k.dims) {
		return k, false
	}
	copy(k.dims[:], shape)
	return k, true
}

// linear applies l to x into y: y = x·wᵀ (+ b).
func (pr *products) linear(l linear, y, x kernels.Tensor) error {
	if err := pr.matmulT(y, x, l.w); err != nil {
		return err
	}
	if l.b != nil {
		return pr.be.AddBias(y, l.b)
	}
	return nil
}

// matmulT writes out = x·wᵀ; in bf16, x is rounded to bf16 first when w
// is BF16.
func (pr *products) matmulT(out, x, w kernels.Tensor) error {
	if !pr.bf16 || w.DType() != kernels.BF16 || x.DType() != kernels.F32 {
		return pr.be.MatMul(out, x, w, true)
	}
	xb, err := pr.rounded(x)
	if err != nil {
		return err
	}
	return pr.be.MatMul(out, xb, w, true)
}

// rounded returns x rounded to bf16 in the copy kept for x's shape.
func (pr *products) rounded(x kernels.Tensor) (kernels.Tensor, error) { return pr.roundedIn(x, 0) }

// attentionOperands prepares attention's q, k and v: in bf16, when the
// backend's attention takes BF16 operands, each is rounded to bf16 (a copy
// of its own) and its float32 values are replaced by the rounded ones, so
// that the decode caches hold, and a decode step reads, what the prompt's
// attention read; the bf16 copies are returned for SoftmaxAttention.
// Otherwise q, k and v come back untouched.
func (pr *products) attentionOperands(q, k, v kernels.Tensor) (qa, ka, va kernels.Tensor, err error) {
	if !pr.bf16 || !pr.attnBF16 {
		return q, k, v, nil
	}
	var ops [3]kernels.Tensor
	for i, t := range []kernels.Tensor{q, k, v} {
		if ops[i], err = pr.roundedIn(t, 1+i); err != nil {
			return nil, nil, nil, err
		}
		if err := pr.be.Convert(t, ops[i]); err != nil {
			return nil, nil, nil, fmt.Errorf("widen rounded attention operand: %w", err)
		}
	}
	return ops[0], ops[1], ops[2], nil
}

// roundedIn is rounded with the copy of x's shape in the given slot.
func (pr *products) roundedIn(x kernels.Tensor, slot int) (kernels.Tensor, error) {
	shape := x.Shape()
	k, ok := keyOf(shape)
	k.slot = slot
	if !ok {
		return nil, fmt.Errorf("round activation %v to bf16: rank above 4", shape)
	}
	xb := pr.copies[k]
	if xb == nil {
		var err error
		if xb, err = pr.be.Alloc(kernels.BF16, shape...); err != nil {
			return nil, fmt.Errorf("bf16 copy of activation %v: %w", shape, err)
		}
		if pr.copies == nil {
			pr.copies = map[shapeKey]kernels.Tensor{}
		}
		pr.copies[k] = xb
	}
	if err := pr.be.Convert(xb, x); err != nil {
		return nil, fmt.Errorf("round activation %v to bf16: %w", shape, err)
	}
	return xb, nil
}

// release frees the bf16 copies (they are made again on demand).
func (pr *products) release() {
	for k, t := range pr.copies {
		pr.be.Free(t)
		delete(pr.copies, k)
	}
}

// scanInputs rounds a scan's x, B and C to bf16 (in bf16 precision) and
// returns the tensors the scan should read: the bf16 copies xb, bb, cb when
// the backend's scans take BF16, else x, B and C themselves, overwritten
// with their rounded values. In f32 it returns x, B and C untouched.
func (pr *products) scanInputs(x, B, C, xb, bb, cb kernels.Tensor) (kernels.Tensor, kernels.Tensor, kernels.Tensor, error) {
	if !pr.bf16 {
		return x, B, C, nil
	}
	for _, p := range []struct {
		name     string
		src, dst kernels.Tensor
	}{{"x", x, xb}, {"B", B, bb}, {"C", C, cb}} {
		if err := pr.be.Convert(p.dst, p.src); err != nil {
			return nil, nil, nil, fmt.Errorf("round scan input %s to bf16: %w", p.name, err)
		}
		if !pr.scanBF16 {
			if err := pr.be.Convert(p.src, p.dst); err != nil {
				return nil, nil, nil, fmt.Errorf("widen rounded scan input %s: %w", p.name, err)
			}
		}
	}
	if pr.scanBF16 {
		return xb, bb, cb, nil
	}
	return x, B, C, nil
}

// attentionTakesBF16 reports whether be's SoftmaxAttention accepts BF16
// q, k and v (the kernels.Backend contract asks only for F32).
func attentionTakesBF16(be kernels.Backend) (bool, error) {
	const p = 16
	ones := make([]float32, p)
	for i := range ones {
		ones[i] = 0.5
	}
	x, err := be.Upload(ones, kernels.BF16, 1, 1, 1, p)
	if err != nil {
		return false, err
	}
	defer be.Free(x)
	y, err := be.Alloc(kernels.F32, 1, 1, 1, p)
	if err != nil {
		return false, err
	}
	defer be.Free(y)
	if be.SoftmaxAttention(y, x, x, x, 1, true) != nil {
		return false, nil
	}
	return true, be.Sync()
}

// scansTakeBF16 reports whether be's SSDChunkScan and SSDRecurrence accept
// BF16 x, B and C (the kernels.Backend contract asks only for F32; the CUDA
// backend takes BF16 too). It runs both on one token of a 16-wide head.
func scansTakeBF16(be kernels.Backend) (bool, error) {
	const p = 16
	var owned []kernels.Tensor
	defer func() {
		for _, t := range owned {
			be.Free(t)
		}
	}()
	up := func(v []float32, dt kernels.DType, shape ...int) (kernels.Tensor, error) {
		t, err := be.Upload(v, dt, shape...)
		if err == nil {
			owned = append(owned, t)
		}
		return t, err
	}
	ones := make([]float32, p)
	for i := range ones {
		ones[i] = 0.5
	}
	x, err := up(ones, kernels.BF16, 1, 1, 1, p)
	if err != nil {
		return false, err
	}
	bc, err := up(ones, kernels.BF16, 1, 1, 1, p)
	if err != nil {
		return false, err
	}
	dt, err := up([]float32{0.5}, kernels.F32, 1, 1, 1)
	if err != nil {
		return false, err
	}
	a, err := up([]float32{-1}, kernels.F32, 1)
	if err != nil {
		return false, err
	}
	y, err := be.Alloc(kernels.F32, 1, 1, 1, p)
	if err != nil {
		return false, err
	}
	owned = append(owned, y)
	if be.SSDChunkScan(y, x, dt, a, bc, bc, nil, nil, DefaultChunk) != nil {
		return false, nil
	}
	if be.SSDRecurrence(y, x, dt, a, bc, bc, nil, nil) != nil {
		return false, nil
	}
	return true, be.Sync()
}
