package esm2graph

import (
	"fmt"
	"math"
)

// e4m3Max is the largest finite float8 e4m3fn value.
const e4m3Max = 448.0

// e4m3Encode is x as a float8 e4m3fn bit pattern: round to nearest even, saturated at ±448 (the
// ops' FloatToE4M3, CUDA's __nv_cvt_float_to_fp8 with SATFINITE, tools/esm2_graph.py
// e4m3_encode). x must not be NaN.
func e4m3Encode(x float32) uint8 {
	var sign uint8
	if math.Signbit(float64(x)) {
		sign = 0x80
	}
	a := math.Min(math.Abs(float64(x)), e4m3Max)
	_, e := math.Frexp(a) // a = f·2^e, f in [0.5, 1): a's binade is 2^(e-1)
	e--
	if a == 0 || e < -6 { // subnormal: m·2^-9, m = 0..8 (8 is the smallest normal, 0x08)
		return sign | uint8(math.RoundToEven(math.Ldexp(a, 9)))
	}
	m := math.RoundToEven((math.Ldexp(a, -e) - 1) * 8) // 0..8
	if m == 8 {
		m, e = 0, e+1
	}
	return sign | uint8(min((e+7)<<3|int(m), 0x7e))
}

// quantizeWeight is the per-output-channel E4M3 quantisation of a weight w [out, in] (row-major):
// codes [out, in] and float32 scales [out] (weightScales) with w ≈ code·scale, in float32 as
// tools/esm2_graph.py quantize_weight computes it.
func quantizeWeight(name string, w []float32, out int) (codes []uint8, scales []float32, err error) {
	if scales, err = weightScales(name, w, out); err != nil {
		return nil, nil, err
	}
	in := len(w) / out
	codes = make([]uint8, len(w))
	for i, x := range w {
		codes[i] = e4m3Encode(x / scales[i/in])
	}
	return codes, scales, nil
}

// weightScales are quantizeWeight's per-row scales of w [out, in]: max |row| / 448 in float32 (1
// for a zero row). A weight that is not finite is an error.
func weightScales(name string, w []float32, out int) ([]float32, error) {
	if out <= 0 || len(w)%out != 0 {
		return nil, fmt.Errorf("%w: %s: %d values are not %d rows", ErrCheckpoint, name, len(w), out)
	}
	in := len(w) / out
	scales := make([]float32, out)
	for r := range out {
		var amax float32
		for _, x := range w[r*in : (r+1)*in] {
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				return nil, fmt.Errorf("%w: %s: row %d holds %g: an FP8 weight must be finite", ErrCheckpoint, name, r, x)
			}
			amax = max(amax, float32(math.Abs(float64(x))))
		}
		s := amax / float32(e4m3Max)
		if !(s > 0) {
			s = 1
		}
		scales[r] = s
	}
	return scales, nil
}
