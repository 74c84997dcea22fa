package formats

import (
	"encoding/binary"
	"math"
	"math/big"
	"math/rand/v2"
	"sort"
	"testing"
)

// narrowFormat describes a binary float format with a sign bit, for building float64
// references independently of the conversion code under test.
type narrowFormat struct {
	name     string
	expBits  uint
	mantBits uint
	decode   func(uint16) float32
	encode   func(float32) uint16
}

var (
	bf16Format = narrowFormat{"BF16", 8, 7, BF16ToF32, F32ToBF16}
	f16Format  = narrowFormat{"F16", 5, 10, F16ToF32, F32ToF16}
)

// refValue is the exact value of a bit pattern, computed in float64 from the IEEE definition.
func (f narrowFormat) refValue(u uint16) float64 {
	bias := 1<<(f.expBits-1) - 1
	e := int(u>>f.mantBits) & (1<<f.expBits - 1)
	m := float64(u & (1<<f.mantBits - 1))
	var v float64
	switch e {
	case 1<<f.expBits - 1:
		if m == 0 {
			v = math.Inf(1)
		} else {
			v = math.NaN()
		}
	case 0:
		v = math.Ldexp(m, 1-bias-int(f.mantBits))
	default:
		v = math.Ldexp(float64(uint64(1)<<f.mantBits)+m, e-bias-int(f.mantBits))
	}
	if u>>(f.expBits+f.mantBits) != 0 {
		v = -v
	}
	return v
}

// refEncoder rounds float64 values to the format by searching the sorted table of all
// finite non-negative values, ties to the even bit pattern.
type refEncoder struct {
	f       narrowFormat
	values  []float64 // values[i] is the value of pattern i, ascending, plus one virtual step past max
	infBits uint16
}

func newRefEncoder(f narrowFormat) *refEncoder {
	infBits := uint16((1<<f.expBits - 1) << f.mantBits)
	r := &refEncoder{f: f, infBits: infBits}
	for u := uint16(0); u < infBits; u++ {
		r.values = append(r.values, f.refValue(u))
	}
	// The next step past the largest finite value: where Inf would sit if the exponent
	// range continued. Ties between max and it go to it (max has an odd mantissa).
	bias := 1<<(f.expBits-1) - 1
	r.values = append(r.values, math.Ldexp(1, bias+1))
	if !sort.Float64sAreSorted(r.values) {
		panic("reference table not sorted")
	}
	return r
}

func (r *refEncoder) encode(v float64) uint16 {
	signBit := uint16(1) << (r.f.expBits + r.f.mantBits)
	var sign uint16
	if math.Signbit(v) {
		sign, v = signBit, -v
	}
	if math.IsNaN(v) {
		panic("refEncoder: NaN has no single answer")
	}
	n := len(r.values)
	if v >= r.values[n-1] {
		return sign | r.infBits
	}
	i := sort.SearchFloat64s(r.values, v) // first index with values[i] >= v
	if r.values[i] == v {
		return sign | uint16(i)
	}
	lo, hi := i-1, i
	dlo, dhi := v-r.values[lo], r.values[hi]-v
	pick := lo
	if dhi < dlo || (dhi == dlo && hi%2 == 0) {
		pick = hi
	}
	if pick == n-1 {
		return sign | r.infBits
	}
	return sign | uint16(pick)
}

func sameFloat(a float32, b float64) bool {
	if math.IsNaN(b) {
		return math.IsNaN(float64(a)) && math.Signbit(float64(a)) == math.Signbit(b)
	}
	return float64(a) == b && math.Signbit(float64(a)) == math.Signbit(b)
}

func TestDecodeAllNarrowPatterns(t *testing.T) {
	for _, f := range []narrowFormat{bf16Format, f16Format} {
		t.Run(f.name, func(t *testing.T) {
			raw := make([]byte, 2*65536)
			src := make([]uint16, 65536)
			for i := range 65536 {
				src[i] = uint16(i)
				binary.LittleEndian.PutUint16(raw[2*i:], uint16(i))
			}
			bulk := make([]float32, 65536)
			if err := DecodeFloat32(DType(f.name), raw, bulk); err != nil {
				t.Fatal(err)
			}
			slice := make([]float32, 65536)
			if f.name == "BF16" {
				BF16ToF32Slice(slice, src)
			} else {
				F16ToF32Slice(slice, src)
			}
			bad := 0
			for i := range 65536 {
				u := uint16(i)
				want := f.refValue(u)
				for _, got := range []float32{f.decode(u), bulk[i], slice[i]} {
					if !sameFloat(got, want) {
						if bad++; bad < 10 {
							t.Errorf("%s %#04x: got %v (%#08x), want %v", f.name, u, got, math.Float32bits(got), want)
						}
					}
					if math.IsNaN(want) && f.name == "F16" && math.Float32bits(got)&0x400000 == 0 {
						t.Errorf("F16 NaN %#04x decoded to a signalling NaN %#08x", u, math.Float32bits(got))
					}
				}
			}
		})
	}
}

// encodeCases returns float32 inputs that stress rounding: every exact value of the
// format, every midpoint between neighbours and one float32 ulp either side of it,
// overflow boundaries, zeros, infinities, float32 subnormals, and random bit patterns.
func encodeCases(t *testing.T, r *refEncoder, rng *rand.Rand) []float32 {
	t.Helper()
	var cases []float32
	add := func(v float64) {
		f := float32(v)
		if float64(f) != v {
			t.Fatalf("case %v is not exact in float32", v)
		}
		cases = append(cases, f, -f)
	}
	vals := r.values
	for i := range len(vals) - 1 {
		add(vals[i])
		mid := (vals[i] + vals[i+1]) / 2
		add(mid)
		m := float32(mid)
		cases = append(cases, math.Nextafter32(m, 0), math.Nextafter32(m, float32(math.Inf(1))))
		cases = append(cases, -math.Nextafter32(m, 0), -math.Nextafter32(m, float32(math.Inf(1))))
	}
	cases = append(cases, 0, float32(math.Copysign(0, -1)), float32(math.Inf(1)), float32(math.Inf(-1)),
		math.MaxFloat32, -math.MaxFloat32, math.SmallestNonzeroFloat32, -math.SmallestNonzeroFloat32,
		math.Float32frombits(0x007fffff), math.Float32frombits(0x00800000))
	for range 1 << 20 {
		f := math.Float32frombits(rng.Uint32())
		if !math.IsNaN(float64(f)) {
			cases = append(cases, f)
		}
	}
	for range 1 << 18 {
		cases = append(cases, float32(rng.NormFloat64()*0.02))
	}
	return cases
}

func TestEncodeNarrowAgainstReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, f := range []narrowFormat{bf16Format, f16Format} {
		t.Run(f.name, func(t *testing.T) {
			ref := newRefEncoder(f)
			cases := encodeCases(t, ref, rng)
			raw := make([]byte, 2*len(cases))
			if err := EncodeFloat32(DType(f.name), cases, raw); err != nil {
				t.Fatal(err)
			}
			slice := make([]uint16, len(cases))
			if f.name == "BF16" {
				F32ToBF16Slice(slice, cases)
			} else {
				F32ToF16Slice(slice, cases)
			}
			bad := 0
			for i, c := range cases {
				want := ref.encode(float64(c))
				for _, got := range []uint16{f.encode(c), binary.LittleEndian.Uint16(raw[2*i:]), slice[i]} {
					if got != want {
						if bad++; bad < 10 {
							t.Errorf("%s(%v = %#08x) = %#04x, want %#04x", f.name, c, math.Float32bits(c), got, want)
						}
					}
				}
			}
			t.Logf("%d inputs checked", len(cases))
		})
	}
}

func TestEncodeNaNStaysQuietNaN(t *testing.T) {
	nans := []uint32{0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001, 0x7fffffff, 0xffffffff, 0x7f802000, 0x7fa00000}
	for _, bits := range nans {
		f := math.Float32frombits(bits)
		b := F32ToBF16(f)
		if b&0x7f80 != 0x7f80 || b&0x7f == 0 || b&0x40 == 0 || (b>>15) != uint16(bits>>31) {
			t.Errorf("F32ToBF16(%#08x) = %#04x: want a quiet NaN with the same sign", bits, b)
		}
		h := F32ToF16(f)
		if h&0x7c00 != 0x7c00 || h&0x3ff == 0 || h&0x200 == 0 || (h>>15) != uint16(bits>>31) {
			t.Errorf("F32ToF16(%#08x) = %#04x: want a quiet NaN with the same sign", bits, h)
		}
		for _, dt := range []DType{BF16, F16} {
			raw := make([]byte, 2)
			if err := EncodeFloat32(dt, []float32{f}, raw); err != nil {
				t.Fatal(err)
			}
			back := make([]float32, 1)
			if err := DecodeFloat32(dt, raw, back); err != nil {
				t.Fatal(err)
			}
			if !math.IsNaN(float64(back[0])) {
				t.Errorf("%s round trip of NaN %#08x gave %v", dt, bits, back[0])
			}
		}
	}
}

func TestF8Decode(t *testing.T) {
	known := []struct {
		dt   DType
		b    uint8
		want float64
	}{
		{F8E4M3, 0x38, 1}, {F8E4M3, 0xb8, -1}, {F8E4M3, 0x7e, 448}, {F8E4M3, 0xfe, -448},
		{F8E4M3, 0x77, 240}, {F8E4M3, 0x08, 1.0 / 64}, {F8E4M3, 0x01, 1.0 / 512}, {F8E4M3, 0x07, 7.0 / 512},
		{F8E4M3, 0x7f, math.NaN()}, {F8E4M3, 0xff, math.Copysign(math.NaN(), -1)}, {F8E4M3, 0x80, math.Copysign(0, -1)},
		{F8E4M3, 0x3c, 1.5}, {F8E4M3, 0x40, 2},
		{F8E5M2, 0x3c, 1}, {F8E5M2, 0x7b, 57344}, {F8E5M2, 0x7c, math.Inf(1)}, {F8E5M2, 0xfc, math.Inf(-1)},
		{F8E5M2, 0x7d, math.NaN()}, {F8E5M2, 0x04, 1.0 / 16384}, {F8E5M2, 0x01, 1.0 / 65536}, {F8E5M2, 0x3e, 1.5},
		{F8E8M0, 127, 1}, {F8E8M0, 128, 2}, {F8E8M0, 0, math.Ldexp(1, -127)}, {F8E8M0, 254, math.Ldexp(1, 127)},
		{F8E8M0, 255, math.NaN()},
	}
	for _, k := range known {
		got := make([]float32, 1)
		if err := DecodeFloat32(k.dt, []byte{k.b}, got); err != nil {
			t.Fatal(err)
		}
		if !sameFloat(got[0], k.want) {
			t.Errorf("%s %#02x = %v, want %v", k.dt, k.b, got[0], k.want)
		}
	}
	// E5M2 is the top byte of binary16: an independent decoder for all 256 patterns.
	for i := range 256 {
		got := F8E5M2ToF32(uint8(i))
		want := f16Format.refValue(uint16(i) << 8)
		if !sameFloat(got, want) {
			t.Errorf("F8_E5M2 %#02x = %v, want %v", i, got, want)
		}
	}
	// E4M3: 127 distinct non-negative finite values, strictly increasing with the bit
	// pattern, each step a multiple of 2^-9, negatives mirror them.
	prev := math.Inf(-1)
	for i := range 0x7f {
		v := float64(F8E4M3ToF32(uint8(i)))
		if !(v > prev) || v != math.Ldexp(math.Round(math.Ldexp(v, 9)), -9) {
			t.Errorf("F8_E4M3 %#02x = %v out of order or off the 2^-9 grid", i, v)
		}
		if n := float64(F8E4M3ToF32(uint8(i) | 0x80)); n != -v || !math.Signbit(n) {
			t.Errorf("F8_E4M3 %#02x = %v, want %v", i|0x80, n, -v)
		}
		prev = v
	}
}

func TestDecodeF64RoundsToNearest(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	src := make([]float64, 0, 1<<16)
	for range 1 << 16 {
		v := math.Float64frombits(rng.Uint64())
		if !math.IsNaN(v) && !math.IsInf(v, 0) {
			src = append(src, v)
		}
	}
	src = append(src, 1+math.Ldexp(1, -24), 1+math.Ldexp(3, -24), math.MaxFloat32*1.5, math.Ldexp(1, -150), math.Ldexp(3, -151))
	raw := make([]byte, 8*len(src))
	for i, v := range src {
		binary.LittleEndian.PutUint64(raw[8*i:], math.Float64bits(v))
	}
	got := make([]float32, len(src))
	if err := DecodeFloat32(F64, raw, got); err != nil {
		t.Fatal(err)
	}
	for i, v := range src {
		want, _ := new(big.Float).SetFloat64(v).Float32()
		if got[i] != want && !(math.IsInf(float64(got[i]), 0) && math.Abs(v) > math.MaxFloat32) {
			t.Errorf("F64 %v → %v, want %v", v, got[i], want)
		}
	}
}

func TestRoundTripEveryFloatDType(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	// F32 and F64 carry every float32 exactly, NaN payloads included.
	src := make([]float32, 4097)
	for i := range src {
		src[i] = math.Float32frombits(rng.Uint32())
	}
	for _, dt := range []DType{F32, F64} {
		raw := make([]byte, len(src)*dt.Size())
		if err := EncodeFloat32(dt, src, raw); err != nil {
			t.Fatal(err)
		}
		back := make([]float32, len(src))
		if err := DecodeFloat32(dt, raw, back); err != nil {
			t.Fatal(err)
		}
		for i := range src {
			if math.Float32bits(back[i]) != math.Float32bits(src[i]) && !(dt == F64 && math.IsNaN(float64(src[i]))) {
				t.Fatalf("%s: element %d: %#08x came back %#08x", dt, i, math.Float32bits(src[i]), math.Float32bits(back[i]))
			}
			if dt == F64 && math.IsNaN(float64(src[i])) != math.IsNaN(float64(back[i])) {
				t.Fatalf("F64: element %d: NaN lost", i)
			}
		}
	}
	// BF16 and F16: decode then encode is the identity on every non-NaN bit pattern.
	for _, dt := range []DType{BF16, F16} {
		raw := make([]byte, 2*65536)
		for i := range 65536 {
			binary.LittleEndian.PutUint16(raw[2*i:], uint16(i))
		}
		wide := make([]float32, 65536)
		if err := DecodeFloat32(dt, raw, wide); err != nil {
			t.Fatal(err)
		}
		again := make([]byte, len(raw))
		if err := EncodeFloat32(dt, wide, again); err != nil {
			t.Fatal(err)
		}
		for i := range 65536 {
			a, b := binary.LittleEndian.Uint16(raw[2*i:]), binary.LittleEndian.Uint16(again[2*i:])
			if math.IsNaN(float64(wide[i])) {
				continue
			}
			if a != b {
				t.Fatalf("%s: %#04x round-tripped to %#04x", dt, a, b)
			}
		}
	}
}

func TestConversionErrors(t *testing.T) {
	dst := make([]float32, 3)
	for _, c := range []struct {
		dt  DType
		raw int
	}{{I32, 12}, {U8, 3}, {"F4", 2}, {BF16, 5}, {BF16, 8}, {F32, 11}, {F8E4M3, 4}} {
		if err := DecodeFloat32(c.dt, make([]byte, c.raw), dst); err == nil {
			t.Errorf("DecodeFloat32(%s, %d bytes, 3 elements) succeeded", c.dt, c.raw)
		}
	}
	for _, c := range []struct {
		dt  DType
		raw int
	}{{F8E4M3, 3}, {I16, 6}, {F16, 5}, {F64, 23}} {
		if err := EncodeFloat32(c.dt, []float32{1, 2, 3}, make([]byte, c.raw)); err == nil {
			t.Errorf("EncodeFloat32(%s, 3 elements, %d bytes) succeeded", c.dt, c.raw)
		}
	}
	if n := BF16ToF32Slice(make([]float32, 2), make([]uint16, 5)); n != 2 {
		t.Errorf("BF16ToF32Slice converted %d, want 2", n)
	}
	if n := F32ToF16Slice(make([]uint16, 5), make([]float32, 3)); n != 3 {
		t.Errorf("F32ToF16Slice converted %d, want 3", n)
	}
}

func TestDTypeSizes(t *testing.T) {
	for dt, want := range map[DType]int{F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1,
		U16: 2, U32: 4, U64: 8, BOOL: 1, C64: 8, F8E4M3: 1, F8E5M2: 1, F8E8M0: 1, "F4": 0, "": 0, "bf16": 0} {
		if got := dt.Size(); got != want {
			t.Errorf("%q.Size() = %d, want %d", dt, got, want)
		}
		if dt.Known() != (want > 0) {
			t.Errorf("%q.Known() = %v", dt, dt.Known())
		}
	}
	for _, dt := range []DType{F64, F32, F16, BF16, F8E4M3, F8E5M2, F8E8M0} {
		if !dt.IsFloat() {
			t.Errorf("%s.IsFloat() = false", dt)
		}
	}
	for _, dt := range []DType{I64, I32, U8, BOOL, C64, "F4", ""} {
		if dt.IsFloat() {
			t.Errorf("%s.IsFloat() = true", dt)
		}
	}
}
