package formats

// DType is a safetensors element type, spelled as in the header ("BF16", "F8_E4M3", ...).
// Any other string is a valid DType too: tensors of an unknown type are carried through
// as bytes (their Size is 0, so only their byte bounds can be checked).
type DType string

// The element types this package knows the size of.
const (
	F64    DType = "F64"
	F32    DType = "F32"
	F16    DType = "F16"
	BF16   DType = "BF16"
	I64    DType = "I64"
	I32    DType = "I32"
	I16    DType = "I16"
	I8     DType = "I8"
	U64    DType = "U64"
	U32    DType = "U32"
	U16    DType = "U16"
	U8     DType = "U8"
	BOOL   DType = "BOOL"
	C64    DType = "C64"     // complex64: two F32
	F8E4M3 DType = "F8_E4M3" // OCP FP8 E4M3 ("fn": finite, NaN = S.1111.111, no infinities)
	F8E5M2 DType = "F8_E5M2" // OCP FP8 E5M2 (IEEE-like: infinities and NaNs)
	F8E8M0 DType = "F8_E8M0" // OCP MX scale: unsigned power of two 2^(e-127), 0xFF = NaN
)

// Size is the number of bytes per element, or 0 when the type is unknown
// (including sub-byte packed types such as F4 that this package does not decode).
func (d DType) Size() int {
	switch d {
	case F64, I64, U64, C64:
		return 8
	case F32, I32, U32:
		return 4
	case F16, BF16, I16, U16:
		return 2
	case I8, U8, BOOL, F8E4M3, F8E5M2, F8E8M0:
		return 1
	}
	return 0
}

// IsFloat reports whether d is a real floating-point type that DecodeFloat32 can decode.
func (d DType) IsFloat() bool {
	switch d {
	case F64, F32, F16, BF16, F8E4M3, F8E5M2, F8E8M0:
		return true
	}
	return false
}

// Known reports whether the size of d is known (Size() > 0).
func (d DType) Known() bool { return d.Size() > 0 }
