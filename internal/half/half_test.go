package half

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestFromFloat64Edges: the values where rounding to binary16 goes wrong when done carelessly
// (ties to even at 1, at the largest finite value and in the subnormals; overflow; underflow).
func TestFromFloat64Edges(t *testing.T) {
	p := math.Ldexp
	cases := []struct {
		in   float64
		want uint16
	}{
		{0, 0x0000},
		{math.Copysign(0, -1), 0x8000},
		{1, 0x3c00},
		{-2, 0xc000},
		{0.1, 0x2e66},
		{1 + p(1, -10), 0x3c01},               // exactly representable
		{1 + p(1, -11), 0x3c00},               // tie: to even (down)
		{1 + p(3, -11), 0x3c02},               // tie: to even (up)
		{1 + p(1, -11) + p(1, -40), 0x3c01},   // just above the tie
		{65504, 0x7bff},                       // largest finite
		{65519.99, 0x7bff},                    // below the tie with Inf
		{65520, 0x7c00},                       // tie between 65504 (odd) and Inf: Inf
		{-65520, 0xfc00},                      //
		{1e10, 0x7c00},                        // overflow
		{math.MaxFloat32, 0x7c00},             //
		{math.Inf(1), 0x7c00},                 //
		{math.Inf(-1), 0xfc00},                //
		{p(1, -14), 0x0400},                   // smallest normal
		{p(1, -14) - p(1, -25), 0x0400},       // tie between 0x3ff (odd) and 0x400: up
		{p(1, -14) - p(3, -25), 0x03fe},       // tie between 0x3fe and 0x3ff: to even
		{p(1, -24), 0x0001},                   // smallest subnormal
		{p(1, -25), 0x0000},                   // tie between 0 and 2^-24: to even (0)
		{p(1, -25) + p(1, -60), 0x0001},       // just above
		{p(3, -25), 0x0002},                   // tie between 1 and 2 units: to even (2)
		{-p(1, -24), 0x8001},                  //
		{p(1, -26), 0x0000},                   // underflow
		{-p(1, -30), 0x8000},                  //
		{math.SmallestNonzeroFloat64, 0x0000}, // float64 subnormal
		{float64(float32(1.0 / 3)), 0x3555},   // float32 input: no double rounding
	}
	for _, c := range cases {
		if got := FromFloat64(c.in); got != c.want {
			t.Errorf("FromFloat64(%g) = %#04x, want %#04x", c.in, got, c.want)
		}
	}
	if h := FromFloat64(math.NaN()); h&0x7c00 != 0x7c00 || h&0x3ff == 0 {
		t.Errorf("FromFloat64(NaN) = %#04x, not a NaN", h)
	}
}

// TestRoundTrip: every binary16 value converts to float32 and back to the same bits (NaNs to a NaN).
func TestRoundTrip(t *testing.T) {
	for i := range 1 << 16 {
		h := uint16(i)
		f := ToFloat32(h)
		got := FromFloat64(float64(f))
		if isNaN16(h) {
			if !math.IsNaN(float64(f)) || !isNaN16(got) {
				t.Fatalf("%#04x: NaN lost (%v, %#04x)", h, f, got)
			}
			continue
		}
		if got != h {
			t.Fatalf("%#04x -> %v -> %#04x", h, f, got)
		}
	}
}

func isNaN16(h uint16) bool { return h&0x7c00 == 0x7c00 && h&0x3ff != 0 }

// TestNearest: random float32 values round to the nearest binary16 value (ties to even), checked
// against the two neighbouring candidates in float64 arithmetic.
func TestNearest(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 200000 {
		f := float64(math.Float32frombits(r.Uint32()))
		if math.IsNaN(f) || math.Abs(f) >= 65520 {
			continue
		}
		h := FromFloat64(f)
		got := float64(ToFloat32(h))
		// Neighbours of h one step towards and away from zero.
		for _, d := range []int{-1, 1} {
			n := int(h&0x7fff) + d
			if n < 0 || n > 0x7bff {
				continue
			}
			other := float64(ToFloat32(h&0x8000 | uint16(n)))
			dg, do := math.Abs(got-f), math.Abs(other-f)
			if do < dg || (do == dg && h&1 == 1) {
				t.Fatalf("FromFloat64(%g) = %#04x (%g), but %g is nearer or the even tie", f, h, got, other)
			}
		}
	}
}

func TestBFloat16(t *testing.T) {
	for _, c := range []struct {
		in   uint16
		want float32
	}{{0x3f80, 1}, {0xc000, -2}, {0x0000, 0}, {0x7f80, float32(math.Inf(1))}, {0x3e80, 0.25}} {
		if got := BFloat16ToFloat32(c.in); got != c.want {
			t.Errorf("BFloat16ToFloat32(%#04x) = %v, want %v", c.in, got, c.want)
		}
	}
}
