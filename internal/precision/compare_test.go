package precision

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// set is an Embeddings of the given ids and vectors.
func set(name string, ids []string, vecs ...[]float32) *Embeddings {
	return &Embeddings{Model: name, DType: "float32", IDs: ids, Vecs: vecs}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

// TestCompareKnownCosines: candidates along x, references at known cosines to them: min, p1
// (linear interpolation), median, mean, the worst five lowest first with a tie in input order,
// and ids matched whatever the reference's order.
func TestCompareKnownCosines(t *testing.T) {
	cs := []float64{0.9, 0.5, 1.0, 0.5, 0.2, 0.95}
	ids := []string{"a", "b", "c", "d", "e", "f"}
	cand, ref := set("cand", ids), set("ref", nil)
	for i := range cs {
		cand.Vecs = append(cand.Vecs, []float32{2, 0}) // the norm must not matter
		j := len(cs) - 1 - i                           // the reference in reverse order
		ref.IDs = append(ref.IDs, ids[j])
		ref.Vecs = append(ref.Vecs, []float32{float32(cs[j]), float32(math.Sqrt(1 - cs[j]*cs[j]))})
	}
	rep, err := compare(cand, ref, 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	// float32 inputs: the cosines are the float32 roundings of cs, within 1e-7.
	approx := func(a, b float64) bool { return math.Abs(a-b) < 1e-7 }
	sorted := []float64{0.2, 0.5, 0.5, 0.9, 0.95, 1.0}
	if rep.N != 6 || rep.Dim != 2 || rep.K != 2 || !approx(rep.MinCosine, 0.2) || !approx(rep.MedianCosine, 0.7) ||
		!approx(rep.MeanCosine, 4.05/6) || !approx(rep.P1Cosine, sorted[0]+0.05*(sorted[1]-sorted[0])) {
		t.Errorf("report %+v", rep)
	}
	var worst []string
	for _, w := range rep.Worst {
		worst = append(worst, w.ID)
	}
	if got := strings.Join(worst, ","); got != "e,b,d,a,f" {
		t.Errorf("worst %s, want e,b,d,a,f (the tie b, d in input order)", got)
	}
	if rep.Worst[1].Cosine != rep.Worst[2].Cosine || !approx(rep.Worst[0].Cosine, 0.2) {
		t.Errorf("worst %+v", rep.Worst)
	}
	if len(rep.Degenerate) != 0 {
		t.Errorf("degenerate %v", rep.Degenerate)
	}
}

// TestCompareIdentical: a set against itself (reordered) has cosine 1 and overlap 1 everywhere.
func TestCompareIdentical(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	a := randomSet(rng, "x", 40, 17)
	b := set("y", nil)
	for _, i := range rng.Perm(40) {
		b.IDs, b.Vecs = append(b.IDs, a.IDs[i]), append(b.Vecs, a.Vecs[i])
	}
	rep, err := Compare(a, b)
	if err != nil {
		t.Fatal(err)
	}
	if rep.N != 40 || rep.K != 10 || rep.MinCosine < 1-1e-12 || rep.MeanOverlap != 1 || rep.MinOverlap != 1 {
		t.Errorf("self: %+v", rep)
	}
}

// TestCompareNeighbours: four 2-d vectors with k = 1, whose nearest neighbours are known (c is
// equally close to a and b and takes a, the earlier); moving c in the reference towards b
// changes c's neighbour only: overlaps 1, 1, 0, 1.
func TestCompareNeighbours(t *testing.T) {
	ids := []string{"a", "b", "c", "d"}
	cand := set("cand", ids, []float32{1, 0}, []float32{0, 1}, []float32{1, 1}, []float32{-1, 0})
	ref := set("ref", ids, []float32{1, 0}, []float32{0, 1}, []float32{1, 1.1}, []float32{-1, 0})
	if got := nearest(normalised(cand.Vecs), 4, 2, 1, 1); !slices.Equal(got, []int32{2, 2, 0, 1}) {
		t.Errorf("candidate neighbours %v, want [2 2 0 1]", got)
	}
	if got := nearest(normalised(ref.Vecs), 4, 2, 1, 2); !slices.Equal(got, []int32{2, 2, 1, 1}) {
		t.Errorf("reference neighbours %v, want [2 2 1 1]", got)
	}
	rep, err := compare(cand, ref, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	if rep.K != 1 || rep.MeanOverlap != 0.75 || rep.MinOverlap != 0 || rep.MinOverlapID != "c" {
		t.Errorf("overlap mean %v min %v (%s), K %d; want 0.75, 0 (c), 1", rep.MeanOverlap, rep.MinOverlap, rep.MinOverlapID, rep.K)
	}
	// k = min(10, n-1) = 3 for four sequences: every other one is a neighbour, overlap 1.
	if rep, err = Compare(cand, ref); err != nil || rep.K != 3 || rep.MeanOverlap != 1 {
		t.Errorf("Compare: K %d, overlap %v, %v", rep.K, rep.MeanOverlap, err)
	}
}

// TestCompareNearestMatchesBruteForce: the blockwise, multi-goroutine neighbour search equals a
// full sort of every row's similarities (ties by index; duplicated vectors make exact ties), for
// sizes that leave partial blocks and odd rows, on 1 to 8 goroutines.
func TestCompareNearestMatchesBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, tc := range []struct{ n, dim, k int }{{2, 3, 1}, {33, 5, 10}, {101, 37, 10}, {150, 64, 7}} {
		e := randomSet(rng, "x", tc.n, tc.dim)
		for i := 0; i+3 < tc.n; i += 7 { // exact ties: copies of other rows
			e.Vecs[i+3] = e.Vecs[i]
		}
		x := normalised(e.Vecs)
		want := make([]int32, 0, tc.n*tc.k)
		for i := range tc.n {
			var js []int32
			for j := range tc.n {
				if j != i {
					js = append(js, int32(j))
				}
			}
			row := func(r int32) []float32 { return x[int(r)*tc.dim : int(r+1)*tc.dim] }
			slices.SortFunc(js, func(p, q int32) int {
				sp, sq := dot(row(int32(i)), row(p)), dot(row(int32(i)), row(q))
				return cmp.Or(cmp.Compare(sq, sp), cmp.Compare(p, q))
			})
			want = append(want, js[:tc.k]...)
		}
		for _, w := range []int{1, 3, 8} {
			if got := nearest(x, tc.n, tc.dim, tc.k, w); !slices.Equal(got, want) {
				t.Errorf("n %d dim %d k %d on %d goroutines: neighbours differ from the brute force", tc.n, tc.dim, tc.k, w)
			}
		}
	}
}

// TestCompareMismatch: an id on one side only, an id twice, vectors of other dimensions, an
// empty set: ErrMismatch naming the id.
func TestCompareMismatch(t *testing.T) {
	v := []float32{1, 2}
	ab := set("m", []string{"a", "b"}, v, v)
	for _, tc := range []struct {
		name      string
		cand, ref *Embeddings
		want      string
	}{
		{"missing in the reference", set("m", []string{"a", "b", "zz"}, v, v, v), ab, `"zz"`},
		{"missing in the candidate", ab, set("r", []string{"a", "yy", "b"}, v, v, v), `"yy"`},
		{"twice", set("m", []string{"a", "b", "a"}, v, v, v), ab, `id "a" is twice in the candidate`},
		{"dimension", ab, set("r", []string{"b", "a"}, v, []float32{1, 2, 3}), `"a" has 3 values`},
		{"empty", set("m", nil), ab, "nothing to compare"},
	} {
		_, err := Compare(tc.cand, tc.ref)
		if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want ErrMismatch with %s", tc.name, err, tc.want)
		}
	}
}

// TestCompareDegenerate: a zero or NaN vector counts as cosine 0 and is named; one sequence
// compares cosines only (K 0, overlaps 1).
func TestCompareDegenerate(t *testing.T) {
	ids := []string{"ok", "zero", "nan"}
	cand := set("c", ids, []float32{1, 0}, []float32{0, 0}, []float32{1, 0})
	ref := set("r", ids, []float32{1, 0}, []float32{1, 0}, []float32{float32(math.NaN()), 0})
	rep, err := Compare(cand, ref)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Degenerate, []string{"zero", "nan"}) || rep.MinCosine != 0 || rep.Worst[0].ID != "zero" || math.IsNaN(rep.MeanCosine) {
		t.Errorf("report %+v", rep)
	}
	one := set("c", []string{"x"}, []float32{1, 2})
	if rep, err = Compare(one, one); err != nil || rep.K != 0 || rep.MinOverlap != 1 || !near(rep.MinCosine, 1) {
		t.Errorf("one sequence: %+v, %v", rep, err)
	}
}

// randomSet is n random vectors of dim values with ids "<prefix>0"...
func randomSet(rng *rand.Rand, prefix string, n, dim int) *Embeddings {
	e := set(prefix, nil)
	for i := range n {
		v := make([]float32, dim)
		for j := range v {
			v[j] = float32(rng.NormFloat64())
		}
		e.IDs, e.Vecs = append(e.IDs, fmt.Sprintf("%s%d", prefix, i)), append(e.Vecs, v)
	}
	return e
}

// BenchmarkCompare prices the neighbour search at a realistic size: 2,000 sequences of 1,280
// dimensions (ESM-2 650M).
func BenchmarkCompare(b *testing.B) {
	rng := rand.New(rand.NewPCG(5, 6))
	a, c := randomSet(rng, "x", 2000, 1280), randomSet(rng, "x", 2000, 1280)
	for b.Loop() {
		if _, err := Compare(a, c); err != nil {
			b.Fatal(err)
		}
	}
}

// TestCompareFormatCosine: 6 decimals, more only where a cosine below 1 would read 1.000000.
func TestCompareFormatCosine(t *testing.T) {
	for c, want := range map[float64]string{0.99921: "0.999210", 1: "1.000000", 0.99999983: "0.9999998",
		1 - 1e-15: "1.000000", 1 - 3e-9: "0.999999997", -0.5: "-0.500000", 0: "0.000000"} {
		if got := FormatCosine(c); got != want {
			t.Errorf("FormatCosine(%v) = %s, want %s", c, got, want)
		}
	}
}
