package precision

import (
	"cmp"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strconv"
	"strings"
)

// Neighbours is the k of Compare's retrieval check: each sequence's 10 nearest neighbours.
const Neighbours = 10

// worstShown is how many of the lowest cosines a Report lists.
const worstShown = 5

// Scored is one sequence's cosine between its candidate and reference vectors.
type Scored struct {
	ID     string  `json:"id"`
	Cosine float64 `json:"cosine"`
}

// Report is what Compare found. Cosines are per sequence, between its candidate and reference
// vectors; P1 and Median are quantiles with linear interpolation (numpy's default). The overlap
// of a sequence is |its K nearest neighbours among the candidate vectors ∩ among the reference
// vectors| / K, by cosine, the sequence itself left out, ties to the earlier sequence.
type Report struct {
	N            int      `json:"n"`
	Dim          int      `json:"dim"`
	MinCosine    float64  `json:"min_cosine"`
	P1Cosine     float64  `json:"p1_cosine"`
	MedianCosine float64  `json:"median_cosine"`
	MeanCosine   float64  `json:"mean_cosine"`
	Worst        []Scored `json:"worst"` // the 5 lowest cosines, lowest first (ties: input order)
	// Degenerate are the ids whose vector is all zero or has a NaN or an infinity on either side;
	// their cosine counts as 0 and their vector as all zero in the neighbour search.
	Degenerate []string `json:"degenerate,omitempty"`
	// K is the neighbours compared per sequence: min(Neighbours, N-1). With one sequence it is
	// 0 and both overlaps are 1 (there is nothing to retrieve).
	K            int     `json:"k"`
	MeanOverlap  float64 `json:"mean_overlap"`
	MinOverlap   float64 `json:"min_overlap"`
	MinOverlapID string  `json:"min_overlap_id"` // the first sequence with MinOverlap
}

// Compare matches cand and ref by id (every id on both sides, once on each; an id missing or
// doubled is an ErrMismatch naming it) and reports the cosine of each sequence's two vectors and
// the overlap of its Neighbours nearest neighbours in either set. Sequences are taken in cand's
// order (ties in Worst and among neighbours go to the earlier one). The neighbour search is
// blockwise on GOMAXPROCS goroutines and never holds the n×n similarities: memory beyond the
// inputs is one set's normalised vectors and n×K neighbours.
func Compare(cand, ref *Embeddings) (Report, error) {
	return compare(cand, ref, Neighbours, runtime.GOMAXPROCS(0))
}

// compare is Compare with k neighbours on workers goroutines.
func compare(cand, ref *Embeddings, k, workers int) (Report, error) {
	refVecs, err := align(cand, ref)
	if err != nil {
		return Report{}, err
	}
	n, dim := len(cand.IDs), cand.Dim()
	rep := Report{N: n, Dim: dim, K: min(k, n-1)}
	cos := make([]float64, n)
	for i, c := range cand.Vecs {
		var ok bool
		if cos[i], ok = cosine(c, refVecs[i]); !ok {
			rep.Degenerate = append(rep.Degenerate, cand.IDs[i])
		}
	}
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Or(cmp.Compare(cos[a], cos[b]), cmp.Compare(a, b)) })
	sorted := make([]float64, n)
	sum := 0.0
	for i, o := range order {
		sorted[i] = cos[o]
		sum += cos[o]
	}
	rep.MinCosine, rep.P1Cosine, rep.MedianCosine = sorted[0], quantile(sorted, 0.01), quantile(sorted, 0.5)
	rep.MeanCosine = sum / float64(n)
	for _, o := range order[:min(worstShown, n)] {
		rep.Worst = append(rep.Worst, Scored{ID: cand.IDs[o], Cosine: cos[o]})
	}

	rep.MeanOverlap, rep.MinOverlap, rep.MinOverlapID = 1, 1, cand.IDs[0]
	if rep.K == 0 {
		return rep, nil
	}
	nc := nearest(normalised(cand.Vecs), n, dim, rep.K, workers) // one set's copy at a time
	nr := nearest(normalised(refVecs), n, dim, rep.K, workers)
	total := 0
	for i := range n {
		a, b := nc[i*rep.K:(i+1)*rep.K], nr[i*rep.K:(i+1)*rep.K]
		common := 0
		for _, x := range a {
			if slices.Contains(b, x) {
				common++
			}
		}
		total += common
		if ov := float64(common) / float64(rep.K); ov < rep.MinOverlap {
			rep.MinOverlap, rep.MinOverlapID = ov, cand.IDs[i]
		}
	}
	rep.MeanOverlap = float64(total) / float64(n*rep.K)
	return rep, nil
}

// align checks that cand and ref hold the same ids, once each, with vectors of one dimension,
// and returns ref's vectors in cand's order.
func align(cand, ref *Embeddings) ([][]float32, error) {
	if len(cand.IDs) == 0 || len(ref.IDs) == 0 {
		return nil, fmt.Errorf("%w: %d candidate and %d reference vectors: nothing to compare", ErrMismatch, len(cand.IDs), len(ref.IDs))
	}
	if len(cand.IDs) != len(cand.Vecs) || len(ref.IDs) != len(ref.Vecs) {
		return nil, fmt.Errorf("%w: %d ids for %d candidate vectors, %d for %d reference vectors",
			ErrMismatch, len(cand.IDs), len(cand.Vecs), len(ref.IDs), len(ref.Vecs))
	}
	candAt, err := index(cand, "candidate")
	if err != nil {
		return nil, err
	}
	refAt, err := index(ref, "reference")
	if err != nil {
		return nil, err
	}
	if err := missing(cand.IDs, refAt, "candidate", ref.Model); err != nil {
		return nil, err
	}
	if err := missing(ref.IDs, candAt, "reference", cand.Model); err != nil {
		return nil, err
	}
	dim := cand.Dim()
	for _, side := range []*Embeddings{cand, ref} {
		for i, v := range side.Vecs {
			if len(v) != dim || dim == 0 {
				return nil, fmt.Errorf("%w: %q has %d values in %s, %q has %d in %s",
					ErrMismatch, side.IDs[i], len(v), side.Model, cand.IDs[0], dim, cand.Model)
			}
		}
	}
	out := make([][]float32, len(cand.IDs))
	for i, id := range cand.IDs {
		out[i] = ref.Vecs[refAt[id]]
	}
	return out, nil
}

// index maps each id of e to its position; an id twice is an ErrMismatch naming it.
func index(e *Embeddings, side string) (map[string]int, error) {
	at := make(map[string]int, len(e.IDs))
	for i, id := range e.IDs {
		if j, dup := at[id]; dup {
			return nil, fmt.Errorf("%w: id %q is twice in the %s (%s), records %d and %d: ids must be unique",
				ErrMismatch, id, side, e.Model, j+1, i+1)
		}
		at[id] = i
	}
	return at, nil
}

// missing is an ErrMismatch naming the ids of side that other (named otherName) lacks, nil when
// there are none.
func missing(ids []string, other map[string]int, side, otherName string) error {
	var lack []string
	for _, id := range ids {
		if _, ok := other[id]; !ok {
			lack = append(lack, fmt.Sprintf("%q", id))
		}
	}
	if len(lack) == 0 {
		return nil
	}
	more := ""
	if len(lack) > 3 {
		more = fmt.Sprintf(" and %d more", len(lack)-3)
	}
	return fmt.Errorf("%w: %d id(s) of the %s are not in %s: %s%s", ErrMismatch, len(lack), side, otherName,
		strings.Join(lack[:min(3, len(lack))], ", "), more)
}

// cosine is a·b / (|a| |b|) in float64; ok false (and 0) when either vector is all zero or not
// finite.
func cosine(a, b []float32) (c float64, ok bool) {
	var dot, na, nb float64
	for i, x := range a {
		y := float64(b[i])
		dot, na, nb = dot+float64(x)*y, na+float64(x)*float64(x), nb+y*y
	}
	c = dot / math.Sqrt(na*nb)
	if na == 0 || nb == 0 || math.IsNaN(c) || math.IsInf(c, 0) || math.IsInf(na, 0) || math.IsInf(nb, 0) {
		return 0, false
	}
	return min(1, max(-1, c)), true
}

// quantile is the p-quantile of sorted (ascending, not empty), interpolated linearly between
// the closest ranks.
func quantile(sorted []float64, p float64) float64 {
	h := p * float64(len(sorted)-1)
	lo := int(h)
	if lo+1 >= len(sorted) {
		return sorted[len(sorted)-1]
	}
	return sorted[lo] + (h-float64(lo))*(sorted[lo+1]-sorted[lo])
}

// normalised is vecs as one row-major n×dim matrix of unit vectors (float64 norms); a vector
// that is all zero or not finite becomes all zero.
func normalised(vecs [][]float32) []float32 {
	dim := len(vecs[0])
	out := make([]float32, len(vecs)*dim)
	for i, v := range vecs {
		var ss float64
		for _, x := range v {
			ss += float64(x) * float64(x)
		}
		if ss == 0 || math.IsNaN(ss) || math.IsInf(ss, 0) {
			continue
		}
		inv := 1 / math.Sqrt(ss)
		row := out[i*dim : (i+1)*dim]
		for j, x := range v {
			row[j] = float32(float64(x) * inv)
		}
	}
	return out
}

// Check is nil when the report meets the thresholds, minCosine for every sequence's cosine
// (MinCosine ≥ minCosine) and minOverlap for the mean neighbour overlap, else an ErrThreshold
// saying each one missed.
func (r Report) Check(minCosine, minOverlap float64) error {
	var miss []string
	if !(r.MinCosine >= minCosine) {
		miss = append(miss, fmt.Sprintf("min cosine %s < %g (worst %q)", FormatCosine(r.MinCosine), minCosine, r.Worst[0].ID))
	}
	if !(r.MeanOverlap >= minOverlap) {
		miss = append(miss, fmt.Sprintf("mean top-%d neighbour overlap %.3f < %g", r.K, r.MeanOverlap, minOverlap))
	}
	if len(r.Degenerate) > 0 {
		miss = append(miss, fmt.Sprintf("%d vector(s) all zero or not finite (%s)", len(r.Degenerate), r.Degenerate[0]))
	}
	if len(miss) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrThreshold, strings.Join(miss, "; "))
}

// FormatCosine writes a cosine with 6 decimals, or as many more (up to 9) as it takes for a
// cosine below 1 not to read 1.000000: 0.999998, 0.9999998; one within 5e-10 of 1 is 1.000000.
func FormatCosine(c float64) string {
	for d := 6; d <= 9; d++ {
		if s := strconv.FormatFloat(c, 'f', d, 64); c >= 1 || !strings.HasPrefix(s, "1.") {
			return s
		}
	}
	return strconv.FormatFloat(c, 'f', 6, 64)
}
