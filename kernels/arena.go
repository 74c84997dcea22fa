package kernels

import (
	"fmt"
	"slices"
)

// Arena allocates a group of tensors on one backend and frees them
// together: the activation buffers of a forward plan, a training step's
// saved tensors. Its first error sticks — later allocations return nil and
// Err says what failed — so a plan is built in straight-line code and
// checked once.
type Arena struct {
	be    Backend
	owned []Tensor
	bytes int64
	err   error
}

// NewArena returns an empty arena on be.
func NewArena(be Backend) *Arena { return &Arena{be: be} }

// Alloc returns a new F32 tensor (contents undefined).
func (a *Arena) Alloc(shape ...int) Tensor { return a.AllocOf(F32, shape...) }

// AllocOf returns a new tensor of dtype dt (contents undefined).
func (a *Arena) AllocOf(dt DType, shape ...int) Tensor {
	if a.err != nil {
		return nil
	}
	t, err := a.be.Alloc(dt, shape...)
	if err != nil {
		a.err = fmt.Errorf("allocate %v activation %v: %w", dt, shape, err)
		return nil
	}
	a.owned = append(a.owned, t)
	a.bytes += int64(t.Len() * dt.Size())
	return t
}

// View returns t reshaped (sharing storage), or t itself when it already
// has that shape.
func (a *Arena) View(t Tensor, shape ...int) Tensor {
	if a.err != nil {
		return nil
	}
	if slices.Equal(t.Shape(), shape) {
		return t
	}
	v, err := a.be.Reshape(t, shape...)
	if err != nil {
		a.err = fmt.Errorf("view %v as %v: %w", t.Shape(), shape, err)
		return nil
	}
	return v
}

// Err is the first error, or nil.
func (a *Arena) Err() error { return a.err }

// ClearErr forgets the error (after the caller has dealt with it; the
// tensors allocated before it stay).
func (a *Arena) ClearErr() { a.err = nil }

// Bytes is the size of the tensors allocated.
func (a *Arena) Bytes() int64 { return a.bytes }

// Free releases every tensor the arena allocated.
func (a *Arena) Free() {
	for _, t := range a.owned {
		a.be.Free(t)
	}
	a.owned, a.bytes = nil, 0
}
