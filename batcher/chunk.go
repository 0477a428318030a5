package batcher

// Long sequences (--overlength chunk): a sequence longer than the window is cut into windows,
// each embedded on its own as <cls> window <eos>, and the windows' outputs are merged into one
// row. The rule is tools/reference_outputs.py's (the PyTorch reference the tests compare with):
//
//   - windows of w residues start at 0, s, 2s, … while a window would end before the last
//     residue, and one last window ends at the last residue (it starts at n − w); a sequence of
//     at most w residues is one window;
//   - the merged per-residue state of a residue is the mean over the windows that cover it;
//   - mean pooling is the mean over the residues of the merged states (not the mean of the
//     windows' means: residues covered twice would count twice);
//   - the bos (<cls>) row is the mean of the windows' <cls> rows.

// Windows are the start residues of the windows of w residues, stride s, that cover a sequence
// of n residues (the rule above), in order; each window is Window(start, n, w). w and s must be
// > 0; s ≤ w leaves no residue uncovered.
func Windows(n, w, s int) []int {
	if n <= w {
		return []int{0}
	}
	var starts []int
	for st := 0; st+w < n; st += s {
		starts = append(starts, st)
	}
	if last := n - w; starts[len(starts)-1] != last {
		starts = append(starts, last)
	}
	return starts
}

// Window is the residue range [lo, hi) of the window starting at start of a sequence of n
// residues cut in windows of w.
func Window(start, n, w int) (lo, hi int) { return start, min(start+w, n) }

// Merger merges the per-residue states of one output of a chunked sequence: Add each window's
// states, then Residues and Mean read the merged states. Sums are float64.
type Merger struct {
	dim   int
	sum   []float64 // n × dim
	count []int32   // windows covering each residue
}

// NewMerger is a Merger for a sequence of n residues of dim values each.
func NewMerger(n, dim int) *Merger {
	return &Merger{dim: dim, sum: make([]float64, n*dim), count: make([]int32, n)}
}

// Add adds the per-residue states of the window starting at residue start: len(states)/dim
// residues of dim values.
func (m *Merger) Add(start int, states []float32) {
	k := len(states) / m.dim
	for i := range k {
		m.count[start+i]++
	}
	acc := m.sum[start*m.dim : (start+k)*m.dim]
	for i, v := range states[:k*m.dim] {
		acc[i] += float64(v)
	}
}

// Residues are the merged per-residue states (n × dim), appended to dst: each residue's mean
// over the windows that cover it.
func (m *Merger) Residues(dst []float32) []float32 {
	for r, c := range m.count {
		for _, v := range m.sum[r*m.dim : (r+1)*m.dim] {
			dst = append(dst, float32(v/float64(max(c, 1))))
		}
	}
	return dst
}

// Mean is the mean over the residues of the merged states (dim values), appended to dst.
func (m *Merger) Mean(dst []float32) []float32 {
	mean := make([]float64, m.dim)
	for r, c := range m.count {
		for j, v := range m.sum[r*m.dim : (r+1)*m.dim] {
			mean[j] += v / float64(max(c, 1))
		}
	}
	n := float64(max(len(m.count), 1))
	for _, v := range mean {
		dst = append(dst, float32(v/n))
	}
	return dst
}

// MeanRows is the mean of rows (each of the same length: the windows' <cls> rows), appended to dst.
func MeanRows(dst []float32, rows ...[]float32) []float32 {
	if len(rows) == 0 {
		return dst
	}
	mean := make([]float64, len(rows[0]))
	for _, r := range rows {
		for j, v := range r {
			mean[j] += float64(v)
		}
	}
	for _, v := range mean {
		dst = append(dst, float32(v/float64(len(rows))))
	}
	return dst
}
