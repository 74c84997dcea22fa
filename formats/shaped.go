package formats

import (
	"encoding/binary"
	"fmt"
	"slices"
)

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

// StackRows reads tensors of shapes [rows[i], cols] and stacks them row-wise
// into one [Σrows, cols] matrix (a fused q|k|v or gate|up weight): as raw
// bf16 bits when every part is stored as BF16 and keepBF16 is set (bits is
// non-nil), else as float32 (f32 is non-nil).
func (c *Checkpoint) StackRows(names []string, rows []int, cols int, keepBF16 bool) (bits []uint16, f32 []float32, err error) {
	total := 0
	bf16 := keepBF16
	for i, n := range names {
		ti, err := c.FloatTensor(n, rows[i], cols)
		if err != nil {
			return nil, nil, err
		}
		bf16 = bf16 && ti.DType == BF16
		total += rows[i]
	}
	off := 0
	if bf16 {
		bits = make([]uint16, total*cols)
		var raw []byte
		for i, n := range names {
			cnt := rows[i] * cols
			raw = slices.Grow(raw[:0], 2*cnt)[:2*cnt]
			if err := c.ReadRaw(n, raw); err != nil {
				return nil, nil, fmt.Errorf("tensor %s: %w", n, err)
			}
			dst := bits[off : off+cnt]
			for j := range dst {
				dst[j] = binary.LittleEndian.Uint16(raw[2*j:])
			}
			off += cnt
		}
		return bits, nil, nil
	}
	f32 = make([]float32, total*cols)
	for i, n := range names {
		cnt := rows[i] * cols
		if err := c.ReadFloat32(n, f32[off:off+cnt]); err != nil {
			return nil, nil, fmt.Errorf("tensor %s: %w", n, err)
		}
		off += cnt
	}
	return nil, f32, nil
}

// StackOptionalVectors concatenates optional 1-D tensors of lengths lens (the
// biases of a fused matrix's parts): zeros for the parts without one, nil
// when none is present.
func (c *Checkpoint) StackOptionalVectors(names []string, lens []int) ([]float32, error) {
	present := false
	for _, n := range names {
		_, ok := c.Tensor(n)
		present = present || ok
	}
	if !present {
		return nil, nil
	}
	var data []float32
	for i, n := range names {
		if _, ok := c.Tensor(n); !ok {
			data = append(data, make([]float32, lens[i])...)
			continue
		}
		v, err := c.Float32Shaped(n, lens[i])
		if err != nil {
			return nil, err
		}
		data = append(data, v...)
	}
	return data, nil
}
