package kernels

// Training extensions of Backend: what a trainer needs, besides the
// forward operations of Backend, to run a whole distillation step on one
// backend — the backward operations of the student's blocks, the losses
// with their gradients, and the optimiser update. Like the extensions in
// cached.go they are optional: a caller type-asserts be.(kernels.Trainer).
// They come in three families (DenseGrad, MambaGrad, LossGrad) so that a
// backend, and its conformance checks (conformance.RunTrainer), can be
// built a family at a time; Trainer is all three.
//
// Conventions, besides Backend's:
//   - Gradients are F32. A backward operation's inputs are the forward's
//     inputs (F32, or BF16 where the forward allows it) and the gradient of
//     its output; it recomputes whatever else it needs (normalisation
//     statistics, attention's log-sum-exp, the scan's states) rather than
//     taking saved intermediates, so a trainer keeps only block inputs.
//   - "written" outputs are overwritten; "accumulated" outputs are added
//     into (parameter gradients summed over a batch and over the micro-
//     batches of an update). A gradient output documented as optional may
//     be nil: it is then not computed.
//   - Shapes follow the forward operation's documentation in backend.go.

// DenseGrad is the backward of the dense, attention and layout operations.
type DenseGrad interface {
	// MatMulAT computes out[m,n] = aᵀ·b for a [k,m] and b [k,n] (leading
	// dimensions of a and b flattened into k, which must agree), written
	// or, when accumulate, added into out. a and b may be F32 or BF16
	// (mixed allowed); accumulation is at least float32. It gives a
	// Linear's weight gradient: dW[out,in] += dYᵀ·X.
	MatMulAT(out, a, b Tensor, accumulate bool) error
	// SumRows computes out[n] = Σ_r a[r,n] over the rows of a (leading
	// dimensions flattened), written or accumulated: a bias gradient.
	SumRows(out, a Tensor, accumulate bool) error
	// GELUBackward writes dx = dy·gelu'(x) for the given form; dx may be
	// dy or x (in place).
	GELUBackward(dx, dy, x Tensor, form GELUForm) error
	// SiLUBackward writes dx = dy·silu'(x) = dy·σ(x)·(1 + x·(1 − σ(x)));
	// dx may be dy or x (in place).
	SiLUBackward(dx, dy, x Tensor) error
	// LayerNormBackward writes dx, the gradient with respect to x of
	// out = LayerNorm(x, weight, bias, eps) given dy = ∂L/∂out, recomputing
	// the mean and variance from x (weight and bias frozen: no gradient).
	LayerNormBackward(dx, dy, x, weight Tensor, eps float32) error
	// RMSNormBackward is LayerNormBackward for RMSNorm.
	RMSNormBackward(dx, dy, x, weight Tensor, eps float32) error
	// SoftmaxAttentionBackward writes dq [b,l,H,p] and dk, dv [b,l,Hkv,p]
	// given out = SoftmaxAttention(q, k, v, scale, causal) and dout (GQA:
	// a kv head's gradient sums over the heads that read it). It
	// recomputes the probabilities block by block (with each row's
	// log-sum-exp), never holding an l×l matrix. q, k and v may be BF16
	// on a backend whose SoftmaxAttention takes them (CUDA: its products
	// then round dout and the probabilities to bf16, a looser precision
	// it documents); the gradients stay F32.
	SoftmaxAttentionBackward(dq, dk, dv, dout, q, k, v, out Tensor, scale float32, causal bool) error
	// RoPEInverse rotates, in place, by the negative of RoPE's angles with
	// the same arguments: it undoes RoPE, and since the rotation is
	// orthogonal it is also RoPE's backward (applied to the gradient).
	RoPEInverse(x Tensor, rotaryDim int, theta float64, pos0 int) error
	// SumHeads is RepeatHeads' backward: out[rows, srcHeads·dim] gets, for
	// each source head s, the sum of the heads s·r … s·r+r−1 of
	// src[rows, heads·dim] (r = heads/srcHeads). Written.
	SumHeads(out, src Tensor, srcHeads, heads, dim int) error
	// SetCols is SliceCols' backward: columns [col0, col0+src.cols) of
	// dst[rows, dstCols] are overwritten with src[rows, cols]; the other
	// columns are left as they are.
	SetCols(dst, src Tensor, col0 int) error
	// Fill writes v into every element of t (F32): zeroing gradients.
	Fill(t Tensor, v float32) error
	// Dropout writes out = x·mask, x and out [rows, d] (leading dimensions
	// flattened), inverted dropout with drop probability prob in [0, 1):
	// element (i, j) is kept, and scaled by 1/(1−prob), when the j-th
	// Uint64 of row i's stream — Go's math/rand/v2 PCG seeded
	// NewPCG(seed, SplitMix64(i)) — shifted right by 11 is ≥
	// uint64(prob·2⁵³), and zeroed otherwise (SplitMix64 below: add
	// 0x9e3779b97f4a7c15, then xor-shift-multiply by 0xbf58476d1ce4e5b9 and
	// 0x94d049bb133111eb with shifts 30, 27, 31).
	// The mask is a pure function of (seed, i, j): the same call on a
	// gradient is the backward; out may be x (in place). package distill
	// draws its host masks the same way (dropout.go).
	Dropout(out, x Tensor, seed uint64, prob float64) error
}

// MambaGrad is the backward of the Mamba-2 mixer's own operations.
type MambaGrad interface {
	// CausalConv1dBackward: given out = CausalConv1d(u, weight, bias, silu)
	// and dout, writes du [b,l,c] and accumulates the gradients of weight
	// [c,k] into dweight and of bias [c] into dbias (each optional).
	CausalConv1dBackward(du, dweight, dbias, dout, u, weight, bias Tensor, silu bool) error
	// DtSoftplusBackward: given dt = DtSoftplus(dtRaw, bias) and ddt,
	// writes dRaw = ddt·σ(dtRaw + bias) and accumulates Σ_{b,l} dRaw into
	// dbias [h] (optional; bias may be nil).
	DtSoftplusBackward(dRaw, dbias, ddt, dtRaw, bias Tensor) error
	// GatedRMSNormBackward: given out = GatedRMSNorm(y, z, weight,
	// groupSize, eps) and dout, writes dy and dz (dz nil exactly when z
	// is nil) and accumulates the weight's gradient into dweight
	// (optional).
	GatedRMSNormBackward(dy, dz, dweight, dout, y, z, weight Tensor, groupSize int, eps float32) error
	// SSDChunkScanBackward is the gradient of SSDChunkScan(y, x, dt, A, B,
	// C, D, nil, chunk) — a zero initial state — given dy [b,l,h,p]: dx, ddt,
	// dB and dC are written (the shapes of x, dt, B and C; a group's dB and
	// dC sum over the heads that read it), dA [h] and dD [h] accumulated
	// (dD optional, and nil when D is nil). The states are recomputed, the
	// state gradient runs backwards through the chunks, and the decay's
	// gradient uses no difference of exponentials that can overflow or
	// cancel (SPEC §3): every exponent evaluated is ≤ 0.
	SSDChunkScanBackward(dx, ddt, dA, dB, dC, dD, dy, x, dt, A, B, C, D Tensor, chunk int) error
}

// Distance is the form of a layer-wise distance between a student's and a
// teacher's hidden states s and t (package distill's LayerDistance).
type Distance uint8

const (
	DistanceL2Norm      Distance = iota // ‖s − t‖₂ (its gradient is 0 when s = t)
	DistanceSquaredL2                   // ‖s − t‖₂²
	DistanceMeanSquared                 // ‖s − t‖₂² / len(s)
)

// AdamWStep is one AdamW update's settings, torch.optim.AdamW's
// arithmetic (package optim's AdamW documents it): Step counts from 1;
// the gradient is first multiplied by GradScale (1, or a clipping factor)
// and rounded to float32, as optim.ClipGlobalNorm stores a clipped
// gradient, so that AdamW with GradScale = the clipping coefficient equals
// ClipGlobalNorm followed by optim's Step bit for bit.
type AdamWStep struct {
	LR, Beta1, Beta2, Eps, WeightDecay float64
	Step                               int64
	GradScale                          float64
}

// LossGrad is the distillation objective's terms and the optimiser. The
// loss functions return their value (one synchronisation with the host)
// and add weight·∂loss/∂input into their gradient output, so several
// terms share one gradient buffer. Their inputs and gradients are F32;
// a gradient output may be nil (the value alone, for evaluation). A value
// that is not finite (non-finite inputs on the rows counted) is returned
// with an error, and the gradient output is then undefined.
type LossGrad interface {
	// KLDivergence is T²·(1/count)·Σ_r KL(softmax(teacher_r/T) ‖
	// softmax(student_r/T)) over the rows r of student and teacher
	// [rows, vocab] that mask selects (nil: every row; else len(mask) =
	// rows; count is the number selected, and the loss is 0 when it is 0).
	// dstudent += weight·∂loss/∂student = weight·(T/count)·(softmax(s/T) −
	// softmax(t/T)) on selected rows. Log-softmax sums in float64.
	KLDivergence(dstudent, student, teacher Tensor, temperature float64, mask []bool, weight float32) (float64, error)
	// CrossEntropy is the mean over counted rows of −log softmax(logits_r)
	// [labels[r+1]] — row r predicts the next token (HF's shift); a label
	// of −100 is not counted. len(labels) = rows; any other label outside
	// [0, vocab) is an error. dlogits += weight·∂loss/∂logits. logits
	// [.., L, vocab] hold sequences of L rows (2-D: one sequence) and the
	// shift stays within each: a sequence's last row predicts nothing.
	// No counted row gives 0.
	CrossEntropy(dlogits, logits Tensor, labels []int, weight float32) (float64, error)
	// LayerDistance is the distance of the given form between student and
	// teacher (equal shapes), summed in float64; dstudent +=
	// weight·∂distance/∂student.
	LayerDistance(dstudent, student, teacher Tensor, form Distance, weight float32) (float64, error)
	// SumSquares is Σ a² in float64 (a global gradient norm's pieces);
	// a NaN or ±Inf element gives the value with an error, as
	// optim.GlobalNorm reports a non-finite gradient.
	SumSquares(a Tensor) (float64, error)
	// AdamW updates param (F32 master values) from grad with the moments m
	// and v (F32, same shape, updated in place), decaying the weights when
	// decay is set. When shadow is not nil (a BF16 tensor of param's
	// shape) it receives the new values rounded to nearest even: the copy
	// the forward pass computes with. grad is read, not cleared. Each
	// element is computed in float64 from the stored float32 values, as
	// optim does, every operation rounded (no fused multiply-add), so the
	// results equal optim.AdamW's bit for bit (where the Go compiler does
	// not fuse optim's own: amd64 below GOAMD64=v3). Settings
	// optim would reject (and Step < 1, GradScale not positive and finite)
	// are an error.
	AdamW(param, grad, m, v, shadow Tensor, decay bool, s AdamWStep) error
}

// Trainer is a backend that can run a whole training step.
type Trainer interface {
	DenseGrad
	MambaGrad
	LossGrad
}

// SplitMix64 is SplitMix64's finaliser, the row hash of Dropout's mask
// (add 0x9e3779b97f4a7c15, then xor-shift-multiply twice and xor-shift):
// row i's stream is Go's rand.NewPCG(seed, SplitMix64(i)).
func SplitMix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}
