// Package half converts between float32/float64 and the two 16-bit float formats of model
// checkpoints and ONNX graphs: IEEE 754 binary16 ("float16", "F16") and bfloat16 ("BF16"). It is
// the module's one float16 conversion (esm2graph's weights, the pipeline's merge of float16
// per-residue windows, gpurun's op tests), exact in the subnormals, where arrow-go's float16
// package flushes to zero on the way in and mis-decodes on the way out.
package half

import (
	"encoding/binary"
	"math"
)

// FromFloat64 is f rounded to the nearest binary16 value, ties to even (what numpy's
// astype(np.float16) does, from float64 or float32 alike: a float32 converts to float64 exactly,
// so FromFloat64(float64(x)) is x's binary16 rounding with no double rounding). Values too large
// become ±Inf, values too small pass through the subnormals to ±0, and NaN stays a (quiet) NaN.
func FromFloat64(f float64) uint16 {
	b := math.Float64bits(f)
	sign := uint16(b>>48) & 0x8000
	exp := int(b>>52) & 0x7ff
	mant := b & (1<<52 - 1)
	switch {
	case exp == 0x7ff: // Inf or NaN
		if mant != 0 {
			return sign | 0x7e00 | uint16(mant>>42)
		}
		return sign | 0x7c00
	case exp == 0: // zero or a float64 subnormal: far below half's smallest subnormal
		return sign
	}
	e := exp - 1023 + 15 // binary16 biased exponent
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e >= 1 { // normal: keep 10 of 52 mantissa bits; a carry rolls into the exponent (0x7bff+1 is Inf)
		h := sign | uint16(e)<<10 | uint16(mant>>42)
		rem, halfway := mant&(1<<42-1), uint64(1)<<41
		if rem > halfway || (rem == halfway && h&1 == 1) {
			h++
		}
		return h
	}
	// Subnormal: the value in units of 2^-24 is full * 2^(exp-1075+24) = full >> shift.
	full := mant | 1<<52
	shift := uint(1051 - exp) // >= 43
	if shift > 60 {
		return sign
	}
	q := full >> shift
	rem, halfway := full&(1<<shift-1), uint64(1)<<(shift-1)
	if rem > halfway || (rem == halfway && q&1 == 1) {
		q++ // 0x3ff+1 = 0x400 is the smallest normal: still right
	}
	return sign | uint16(q)
}

// ToFloat32 is the float32 value of the binary16 bits h (exact).
func ToFloat32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp != 0:
		return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
	case mant == 0:
		return math.Float32frombits(sign)
	}
	// Subnormal: mant * 2^-24, exactly representable as a normal float32.
	v := float32(mant) * (1.0 / (1 << 24))
	if sign != 0 {
		v = -v
	}
	return v
}

// BFloat16ToFloat32 is the float32 value of the bfloat16 bits b (its top 16 bits; exact).
func BFloat16ToFloat32(b uint16) float32 { return math.Float32frombits(uint32(b) << 16) }

// Kind is an element type DecodeLE reads.
type Kind int

// Element types of DecodeLE.
const (
	Unknown Kind = iota // leaves dst unchanged
	F32
	F16
	BF16
	F64
)

// DecodeLE converts len(dst) little-endian values of kind k from src into dst (float32): the one
// place the checkpoint readers (safetensors, torch.save) turn stored tensors into float32.
func DecodeLE(dst []float32, src []byte, k Kind) {
	le := binary.LittleEndian
	switch k {
	case F32:
		for i := range dst {
			dst[i] = math.Float32frombits(le.Uint32(src[4*i:]))
		}
	case F16:
		for i := range dst {
			dst[i] = ToFloat32(le.Uint16(src[2*i:]))
		}
	case BF16:
		for i := range dst {
			dst[i] = BFloat16ToFloat32(le.Uint16(src[2*i:]))
		}
	case F64:
		for i := range dst {
			dst[i] = float32(math.Float64frombits(le.Uint64(src[8*i:])))
		}
	}
}
