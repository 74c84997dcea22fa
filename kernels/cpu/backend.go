// Package cpu is the CPU implementation of kernels.Backend, in pure Go.
//
// Tensors are float32 slices; BF16 tensors are kept as their uint16 bits and
// converted on the fly by the operations that accept them (MatMul, Convert,
// Download). Reductions that decide accuracy (norms, softmax, attention
// states, conv sums, cumulative sums of the scan) run in float64.
//
// Work is spread over a bounded number of goroutines (New's workers). Every
// output element is computed by one fixed sequence of operations that does
// not depend on how the work was split, so results are bit-identical from
// run to run and for any number of workers.
package cpu

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/matsurgery/matsurgery/kernels"
)

// Backend is the CPU backend. The zero value is not usable: call New.
type Backend struct {
	workers int
	closed  bool
}

var _ kernels.Backend = (*Backend)(nil)

// New returns a CPU backend that uses at most workers goroutines per
// operation; workers ≤ 0 means runtime.GOMAXPROCS(0).
func New(workers int) *Backend {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	return &Backend{workers: workers}
}

// Name is "cpu (N workers)".
func (be *Backend) Name() string { return fmt.Sprintf("cpu (%d workers)", be.workers) }

// Close marks the backend closed; later operations fail.
func (be *Backend) Close() error {
	be.closed = true
	return nil
}

// Sync is a no-op: every operation has finished when it returns.
func (be *Backend) Sync() error { return nil }

// Tensor is a CPU tensor. Exactly one of f32 and bf16 is set.
type Tensor struct {
	shape []int
	dtype kernels.DType
	f32   []float32
	bf16  []uint16
	view  bool // shares the storage of another tensor (from Reshape)
	freed bool
}

// Shape returns a copy of the dimensions.
func (t *Tensor) Shape() []int { return slices.Clone(t.shape) }

// DType is the element type.
func (t *Tensor) DType() kernels.DType { return t.dtype }

// Len is the number of elements.
func (t *Tensor) Len() int { return product(t.shape) }

func product(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

func checkShape(shape []int) error {
	if len(shape) == 0 {
		return errors.New("a tensor needs at least one dimension")
	}
	n := 1
	for _, d := range shape {
		if d <= 0 {
			return fmt.Errorf("shape %v has a dimension ≤ 0", shape)
		}
		if n > (1<<62)/d {
			return fmt.Errorf("shape %v is too large", shape)
		}
		n *= d
	}
	return nil
}

func (be *Backend) alive() error {
	if be.closed {
		return errors.New("cpu backend is closed")
	}
	return nil
}

// Alloc returns a zero-filled tensor (the contract leaves contents undefined).
func (be *Backend) Alloc(dt kernels.DType, shape ...int) (kernels.Tensor, error) {
	if err := be.alive(); err != nil {
		return nil, err
	}
	if err := checkShape(shape); err != nil {
		return nil, fmt.Errorf("alloc: %w", err)
	}
	t := &Tensor{shape: slices.Clone(shape), dtype: dt}
	switch dt {
	case kernels.F32:
		t.f32 = make([]float32, product(shape))
	case kernels.BF16:
		t.bf16 = make([]uint16, product(shape))
	default:
		return nil, fmt.Errorf("alloc: unsupported dtype %v", dt)
	}
	return t, nil
}

// Upload copies host into a new tensor; to BF16 it rounds to nearest even.
func (be *Backend) Upload(host []float32, dt kernels.DType, shape ...int) (kernels.Tensor, error) {
	if err := be.alive(); err != nil {
		return nil, err
	}
	if err := checkShape(shape); err != nil {
		return nil, fmt.Errorf("upload: %w", err)
	}
	if n := product(shape); n != len(host) {
		return nil, fmt.Errorf("upload: shape %v holds %d elements, host slice has %d", shape, n, len(host))
	}
	t := &Tensor{shape: slices.Clone(shape), dtype: dt}
	switch dt {
	case kernels.F32:
		t.f32 = slices.Clone(host)
	case kernels.BF16:
		t.bf16 = make([]uint16, len(host))
		be.parallelFor(len(host), 1<<16, func(lo, hi int) { f32ToBF16(t.bf16[lo:hi], host[lo:hi]) })
	default:
		return nil, fmt.Errorf("upload: unsupported dtype %v", dt)
	}
	return t, nil
}

// UploadBF16 copies raw bf16 bits into a new BF16 tensor.
func (be *Backend) UploadBF16(host []uint16, shape ...int) (kernels.Tensor, error) {
	if err := be.alive(); err != nil {
		return nil, err
	}
	if err := checkShape(shape); err != nil {
		return nil, fmt.Errorf("upload bf16: %w", err)
	}
	if n := product(shape); n != len(host) {
		return nil, fmt.Errorf("upload bf16: shape %v holds %d elements, host slice has %d", shape, n, len(host))
	}
	return &Tensor{shape: slices.Clone(shape), dtype: kernels.BF16, bf16: slices.Clone(host)}, nil
}

// Download returns the elements as float32 (BF16 widened exactly).
func (be *Backend) Download(t kernels.Tensor) ([]float32, error) {
	ct, err := be.tensor(t, "download")
	if err != nil {
		return nil, err
	}
	if ct.dtype == kernels.F32 {
		return slices.Clone(ct.f32), nil
	}
	out := make([]float32, len(ct.bf16))
	be.parallelFor(len(out), 1<<16, func(lo, hi int) { bf16ToF32(out[lo:hi], ct.bf16[lo:hi]) })
	return out, nil
}

// Free drops the tensor's storage; on a view it only forgets the view.
func (be *Backend) Free(t kernels.Tensor) {
	ct, ok := t.(*Tensor)
	if !ok || ct == nil {
		return
	}
	if !ct.view {
		ct.freed = true
	}
	ct.f32, ct.bf16 = nil, nil
}

// Reshape returns a view of t with a new shape of the same element count.
func (be *Backend) Reshape(t kernels.Tensor, shape ...int) (kernels.Tensor, error) {
	ct, err := be.tensor(t, "reshape")
	if err != nil {
		return nil, err
	}
	if err := checkShape(shape); err != nil {
		return nil, fmt.Errorf("reshape: %w", err)
	}
	if product(shape) != ct.Len() {
		return nil, fmt.Errorf("reshape: %v (%d elements) to %v (%d elements)", ct.shape, ct.Len(), shape, product(shape))
	}
	return &Tensor{shape: slices.Clone(shape), dtype: ct.dtype, f32: ct.f32, bf16: ct.bf16, view: true}, nil
}

// tensor checks that t is a live tensor of this backend.
func (be *Backend) tensor(t kernels.Tensor, what string) (*Tensor, error) {
	if err := be.alive(); err != nil {
		return nil, err
	}
	ct, ok := t.(*Tensor)
	if !ok || ct == nil {
		if t == nil {
			return nil, fmt.Errorf("%s is nil", what)
		}
		return nil, fmt.Errorf("%s is a %T, not a cpu tensor", what, t)
	}
	if ct.freed || (ct.f32 == nil && ct.bf16 == nil) {
		return nil, fmt.Errorf("%s was freed", what)
	}
	return ct, nil
}

// f32Tensor checks that t is a live F32 tensor of this backend and returns
// its data.
func (be *Backend) f32Tensor(t kernels.Tensor, what string) (*Tensor, error) {
	ct, err := be.tensor(t, what)
	if err != nil {
		return nil, err
	}
	if ct.dtype != kernels.F32 {
		return nil, fmt.Errorf("%s is %v, this operation takes f32", what, ct.dtype)
	}
	return ct, nil
}

// optF32 is f32Tensor for an optional operand: nil gives nil.
func (be *Backend) optF32(t kernels.Tensor, what string) (*Tensor, error) {
	if t == nil {
		return nil, nil
	}
	if ct, ok := t.(*Tensor); ok && ct == nil {
		return nil, nil
	}
	return be.f32Tensor(t, what)
}

func wantShape(t *Tensor, what string, shape ...int) error {
	if !slices.Equal(t.shape, shape) {
		return fmt.Errorf("%s has shape %v, want %v", what, t.shape, shape)
	}
	return nil
}

// lastDim returns (rows, last) of t's shape: rows is the product of the
// leading dimensions.
func lastDim(t *Tensor) (rows, last int) {
	last = t.shape[len(t.shape)-1]
	return t.Len() / last, last
}

// parallelFor runs fn over contiguous ranges covering [0, n), each of at
// least grain items, on at most be.workers goroutines.
func (be *Backend) parallelFor(n, grain int, fn func(lo, hi int)) {
	if n <= 0 {
		return
	}
	grain = max(grain, 1)
	parts := min(be.workers, (n+grain-1)/grain)
	if parts <= 1 {
		fn(0, n)
		return
	}
	var wg sync.WaitGroup
	for p := range parts {
		lo, hi := n*p/parts, n*(p+1)/parts
		wg.Go(func() { fn(lo, hi) })
	}
	wg.Wait()
}

// parallelTasks runs fn(worker, task) for every task in [0, n) on at most
// be.workers goroutines that take tasks in order; worker (in [0, workers))
// lets fn use per-goroutine scratch space.
func (be *Backend) parallelTasks(n int, fn func(worker, task int)) int {
	workers := min(be.workers, n)
	if workers <= 1 {
		for i := range n {
			fn(0, i)
		}
		return 1
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				fn(w, i)
			}
		})
	}
	wg.Wait()
	return workers
}

// workerCount is the number of distinct worker ids parallelTasks may pass
// for n tasks.
func (be *Backend) workerCount(n int) int { return max(1, min(be.workers, n)) }
