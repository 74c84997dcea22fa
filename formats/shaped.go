package formats

import "fmt"

// FloatTensor returns the header of a float tensor after checking that it
// exists and has exactly the given shape: what a model loader asks of every
// weight, with an error naming the tensor.
func (c *Checkpoint) FloatTensor(name string, shape ...int) (TensorInfo, error) {
	ti, ok := c.Tensor(name)
	if !ok {
		return ti, fmt.Errorf("tensor %s is missing", name)
	}
	if !ti.DType.IsFloat() {
		return ti, fmt.Errorf("tensor %s has dtype %s, want a float type", name, ti.DType)
	}
	if len(ti.Shape) != len(shape) {
		return ti, fmt.Errorf("tensor %s has shape %v, want %v", name, ti.Shape, shape)
	}
	for i, d := range shape {
		if ti.Shape[i] != int64(d) {
			return ti, fmt.Errorf("tensor %s has shape %v, want %v", name, ti.Shape, shape)
		}
	}
	return ti, nil
}

// Float32Shaped reads a float tensor of exactly the given shape as float32.
func (c *Checkpoint) Float32Shaped(name string, shape ...int) ([]float32, error) {
	if _, err := c.FloatTensor(name, shape...); err != nil {
		return nil, err
	}
	v, err := c.Float32(name)
	if err != nil {
		return nil, fmt.Errorf("tensor %s: %w", name, err)
	}
	return v, nil
}
