// Package kernels holds the numerics of matsurgery behind one Backend
// interface: a CPU backend written in Go (package kernels/cpu) and a CUDA
// backend reached through purego (package kernels/cuda). Every backend passes
// the same conformance suite (package kernels/conformance), which checks each
// operation against the float64 references of package kernels/reference.
//
// Conventions shared by every operation:
//   - Tensors are dense, row-major, owned by the backend that allocated them.
//     Data moves to a backend once (Upload) and back once (Download); no
//     operation round-trips through the host.
//   - Activations use the Mamba-2 layout: x [batch, seqlen, heads, headdim],
//     dt [batch, seqlen, heads], B and C [batch, seqlen, groups, dstate].
//   - Outputs are written, never accumulated into, unless the operation says so.
//   - Outputs are float32; inputs may be F32 or BF16 where an operation says so.
//   - Shapes are checked; a mismatch is a returned error, never a panic.
package kernels

import "fmt"

// DType is the element type of a Tensor.
type DType uint8

const (
	F32  DType = iota // IEEE float32
	BF16              // bfloat16 (upper half of a float32)
)

func (d DType) String() string {
	switch d {
	case F32:
		return "f32"
	case BF16:
		return "bf16"
	}
	return fmt.Sprintf("dtype(%d)", uint8(d))
}

// Size is the number of bytes of one element.
func (d DType) Size() int {
	if d == BF16 {
		return 2
	}
	return 4
}

// Tensor is a dense array resident on one backend.
type Tensor interface {
	Shape() []int // a copy of the dimensions
	DType() DType
	Len() int // number of elements (product of Shape)
}

// GELUForm selects the GELU approximation.
type GELUForm uint8

const (
	GELUErf  GELUForm = iota // exact: x/2·(1+erf(x/√2)) (torch "gelu")
	GELUTanh                 // tanh form (HF "gelu_new", "gelu_pytorch_tanh")
)

// Backend is one compute device. A Backend is not safe for concurrent use:
// one goroutine owns it (the CUDA backend pins its context to a locked OS
// thread).
type Backend interface {
	Name() string // "cpu", "cuda:0 (NVIDIA H200)", …
	Close() error

	// Memory.
	Alloc(dt DType, shape ...int) (Tensor, error) // contents undefined
	Upload(host []float32, dt DType, shape ...int) (Tensor, error)
	UploadBF16(host []uint16, shape ...int) (Tensor, error) // raw bf16 bits, no rounding
	Download(t Tensor) ([]float32, error)                   // any dtype → float32
	Free(t Tensor)
	// Reshape returns a view of t with a new shape of the same element
	// count, sharing t's storage (writes through either are seen by both).
	// Free releases storage only when called on the tensor that owns it
	// (from Alloc or Upload); on a view it is a no-op, and a view must not
	// be used after its owner is freed.
	Reshape(t Tensor, shape ...int) (Tensor, error)
	Sync() error // wait for queued work; a no-op on synchronous backends

	// Linear algebra.
	// MatMul computes out[m,n] = a[m,k] · bᵀ when transB (b is [n,k], the
	// layout of a PyTorch Linear weight), else a[m,k] · b[k,n]. a and b may
	// be F32 or BF16 (mixed allowed); accumulation is at least float32.
	// Leading dimensions of a and out are flattened into m.
	MatMul(out, a, b Tensor, transB bool) error
	// AddBias adds bias[n] to every row of x[..., n] in place.
	AddBias(x, bias Tensor) error

	// Elementwise, over equal shapes (in place allowed: out may be a).
	Add(out, a, b Tensor) error
	Mul(out, a, b Tensor) error
	Scale(out, a Tensor, s float32) error
	SiLU(out, a Tensor) error
	GELU(out, a Tensor, form GELUForm) error
	// Convert writes a into out converting dtype (f32→bf16 rounds to nearest even).
	Convert(out, a Tensor) error

	// Layout.
	// SliceCols copies columns [col0, col0+out.cols) of src[rows, srcCols]
	// into out[rows, cols]; rows = product of leading dims.
	SliceCols(out, src Tensor, col0 int) error
	// RepeatHeads writes out[rows, heads*dim] from src[rows, srcHeads*dim]
	// with out head h = src head h/(heads/srcHeads) (repeat_interleave, the
	// GQA repeat_kv convention). heads must be a multiple of srcHeads.
	// rows = out.Len()/(heads*dim); only element counts are checked, so out
	// and src may keep the heads as a dimension ([.., heads, dim]) or not.
	RepeatHeads(out, src Tensor, srcHeads, heads, dim int) error

	// Normalisation over the last dimension.
	LayerNorm(out, x, weight, bias Tensor, eps float32) error // bias may be nil
	RMSNorm(out, x, weight Tensor, eps float32) error
	// GatedRMSNorm: per group of groupSize contiguous channels of the last
	// dim, out = RMSNorm(y·silu(z))·weight (norm after gate, Mamba-2's
	// RMSNormGated with norm_before_gate=false). z may be nil (no gate).
	GatedRMSNorm(out, y, z, weight Tensor, groupSize int, eps float32) error

	// Mamba-2 pieces.
	// DtSoftplus: out[b,l,h] = softplus(dtRaw[b,l,h] + bias[h]); bias may be nil.
	DtSoftplus(out, dtRaw, bias Tensor) error
	// CausalConv1d: depthwise causal convolution over the sequence of
	// u[batch, seqlen, channels] with weight[channels, k] and bias[channels]
	// (bias may be nil): out[t,c] = bias[c] + Σ_{j<k} w[c,j]·u[t−k+1+j, c],
	// u at negative t being 0; then SiLU when silu is true.
	CausalConv1d(out, u, weight, bias Tensor, silu bool) error
	// SSDRecurrence runs the Mamba-2 SSM sequentially over t:
	//   S_t = exp(dt_t·A_h)·S_{t−1} + dt_t·x_t ⊗ B_t,  y_t = S_t·C_t + D_h·x_t
	// per batch b and head h; head h reads group h/(heads/groups) of B and C.
	// x[b,l,h,p], dt[b,l,h] (already softplus'ed), A[h] (the negative decay,
	// not A_log), B, C [b,l,g,n], D[h] or nil (0). state [b,h,p,n] or nil: when
	// given it is the initial state on entry and the final state on return;
	// when nil the initial state is zero. y[b,l,h,p].
	SSDRecurrence(y, x, dt, A, B, C, D, state Tensor) error
	// SSDChunkScan computes the same function as SSDRecurrence by the chunked
	// (state-space-dual) algorithm with chunk length chunk (SPEC §3): every
	// exponent ≤ 0, dt, cumsums and states kept in float32 or wider.
	SSDChunkScan(y, x, dt, A, B, C, D, state Tensor, chunk int) error

	// Attention over q[b,l,H,p], k and v [b,l,Hkv,p] (GQA: head h reads kv
	// head h/(H/Hkv)); out [b,l,H,p].
	// LinearAttention is causal and softmax-free, unscaled:
	// out_t = Σ_{s≤t} (q_t·k_s)·v_s.
	LinearAttention(out, q, k, v Tensor) error
	// SoftmaxAttention: out_t = Σ_s softmax_s(scale·q_t·k_s)·v_s over s≤t when
	// causal, all s otherwise.
	SoftmaxAttention(out, q, k, v Tensor, scale float32, causal bool) error
	// RoPE rotates, in place, the first rotaryDim dims of each head of
	// x[b,l,h,p] by position pos0+t (rotate-half form, GPT-NeoX/HF: pairs
	// (i, i+rotaryDim/2), inv_freq_i = theta^(−2i/rotaryDim)). Dims past
	// rotaryDim are untouched (partial rotary, Phi-2).
	RoPE(x Tensor, rotaryDim int, theta float64, pos0 int) error
}
