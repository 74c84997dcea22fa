package distill

import (
	"fmt"
	"math"
	"slices"
)

// Param is one trainable tensor: its float32 master copy, which the
// forward pass reads directly (an optimiser updates Data in place), and the
// gradient Backward accumulates into Grad.
type Param struct {
	Name  string // the checkpoint key, e.g. language_model.model.layers.0.mamba.in_proj.weight
	Shape []int  // as stored in the checkpoint (conv1d.weight is [channels, 1, kernel])
	Data  []float32
	Grad  []float32
	// Decay reports a tensor of two or more dimensions: the recipe applies
	// weight decay to matrices only (not to biases, A_log, D, dt_bias or
	// norm weights).
	Decay bool
}

func newParam(name string, data []float32, shape ...int) (*Param, error) {
	n := 1
	for _, d := range shape {
		n *= d
	}
	if n != len(data) {
		return nil, fmt.Errorf("parameter %s: shape %v holds %d values, got %d", name, shape, n, len(data))
	}
	for i, v := range data {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return nil, fmt.Errorf("parameter %s: element %d is %g", name, i, v)
		}
	}
	return &Param{Name: name, Shape: slices.Clone(shape), Data: data, Grad: make([]float32, len(data)), Decay: len(shape) >= 2}, nil
}

// Len is the number of elements.
func (p *Param) Len() int { return len(p.Data) }

// ZeroGrad clears the gradient.
func (p *Param) ZeroGrad() { clear(p.Grad) }
