package initmap

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/matsurgery/matsurgery/formats"
)

// encodeInto writes float64 values into dst in dtype dt, rounding once,
// correctly (to nearest even) from the float64 value.
func encodeInto(dst []byte, dt formats.DType, v []float64) error {
	if len(dst) != len(v)*dt.Size() {
		return fmt.Errorf("encode %s: %d bytes for %d values", dt, len(dst), len(v))
	}
	if dt == formats.F64 {
		for i, x := range v {
			binary.LittleEndian.PutUint64(dst[8*i:], math.Float64bits(x))
		}
		return nil
	}
	f := make([]float32, len(v))
	for i, x := range v {
		if dt == formats.F32 {
			f[i] = float32(x)
		} else {
			f[i] = roundToOdd32(x)
		}
	}
	return formats.EncodeFloat32(dt, f, dst)
}

// roundToOdd32 rounds x to float32 by round-to-odd: with its 29 extra bits
// this makes a following round-to-nearest-even to a narrower format (bf16,
// f16) equal to rounding x directly.
func roundToOdd32(x float64) float32 {
	t := float32(x)
	if float64(t) == x || math.IsInf(float64(t), 0) || math.IsNaN(x) {
		return t
	}
	b := math.Float32bits(t)
	if b&1 == 0 {
		if math.Abs(float64(t)) > math.Abs(x) {
			b--
		} else {
			b++
		}
	}
	return math.Float32frombits(b)
}

// convertInto writes src's values into dst in dtype dt: a byte copy when the
// dtypes agree, else one correct rounding.
func convertInto(dst []byte, dt formats.DType, src *Tensor) error {
	if src.DType == dt {
		if len(dst) != len(src.Data) {
			return fmt.Errorf("copy %s: %d bytes into %d", dt, len(src.Data), len(dst))
		}
		copy(dst, src.Data)
		return nil
	}
	n := int(numel(src.Shape))
	v := make([]float64, n)
	if src.DType == formats.F64 {
		for i := range v {
			v[i] = math.Float64frombits(binary.LittleEndian.Uint64(src.Data[8*i:]))
		}
	} else {
		f := make([]float32, n)
		if err := formats.DecodeFloat32(src.DType, src.Data, f); err != nil {
			return err
		}
		for i, x := range f {
			v[i] = float64(x)
		}
	}
	return encodeInto(dst, dt, v)
}
